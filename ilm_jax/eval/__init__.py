"""Ranking metrics, full-ranking evaluation and classic baselines."""
