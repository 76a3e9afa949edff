"""Renderers: report data in, text / JSON / JUnit out. Report data is built elsewhere; nothing here runs a
model."""
