"""keras_ctr_compress.compress"""
