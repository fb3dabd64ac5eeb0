"""The pure core: types, ports, signals, scoring and ranking. No IO, no drivers."""
