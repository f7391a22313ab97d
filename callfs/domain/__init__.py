"""The vocabulary every layer shares: the error hierarchy (errors.py), the data model
(model.py) and what a layer reports as it works (observer.py). A leaf: it imports nothing of CallFS, so storage and coordination use it without
importing the engine's package."""
