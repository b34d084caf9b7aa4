"""keras_ctr_compress.models"""
