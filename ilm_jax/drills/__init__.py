"""Reliability drills: fuzzed parsers, hostile weight files, kill -9, damage."""
