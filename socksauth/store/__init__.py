"""The SQL store. Upper layers import ``socksauth.store.interfaces`` only."""
