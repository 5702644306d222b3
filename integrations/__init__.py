"""Drop-in integrations for vendor SDKs, one module per vendor."""
