"""Digital I/O of a station: a trigger input (a light barrier or a PLC output) and verdict
outputs (ok, ng, error, busy, ready), through libgpiod v2 or an in-memory chip."""
