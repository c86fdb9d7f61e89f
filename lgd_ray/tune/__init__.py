"""The Ray Tune sweep: its spec (`spec.py`), the trainable and driver (`trainable.py`), its results
(`results.py`). Built on the engine; imported by the CLI only."""
