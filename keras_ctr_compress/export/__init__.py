"""keras_ctr_compress.export"""
