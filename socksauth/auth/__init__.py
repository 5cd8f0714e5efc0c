"""Who may use the proxy: password hashing, verification off the event loop, accounts."""
