"""Pipeline definitions; their compiled IR (``*.yaml``) is checked in beside them."""
