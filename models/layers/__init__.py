"""Shared Keras layers of the multi-task models: towers, cross network, bottoms, heads."""
