"""The vocabulary every layer shares: the error hierarchy (errors.py) and the data model
(model.py). A leaf: it imports nothing of CallFS, so storage and coordination use it without
importing the engine's package."""
