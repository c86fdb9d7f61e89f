"""The commands built on the engine: demo, bench, activation bench, cost plan, report, diagnostics.
None of them is imported by the engine or the sweep."""
