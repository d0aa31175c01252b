"""Offline "mini" setting: a procedural toy world and a personal concept kit to train and score a small model."""
