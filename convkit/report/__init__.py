"""Renderers: report data in, text / JSON / JUnit out. Report data is built elsewhere; nothing here runs a
model.

``text`` renders a parity report for people (and holds the table helpers), ``junit`` is the one JUnit XML
writer, ``files`` writes verify's and export's report files, ``tables`` renders the other commands' tables
(inspect, bench, doctor, matrix, env list).
"""
