"""Keras layers of keras-ctr-compress (one layer per module, all registered serializable)."""
