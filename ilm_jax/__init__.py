"""ilm_jax: the Item-Language Model for conversational recommendation in JAX."""

__version__ = "0.1.0"
