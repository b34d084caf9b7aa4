"""keras_ctr_compress.search"""
