"""Frozen copy of the slot layout-1 code (Lua scripts and their driver), to fill a Redis as it was."""
