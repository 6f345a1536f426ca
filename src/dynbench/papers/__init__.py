"""The seed papers as data: tables and claims (:mod:`.registry`), verdict rule (:mod:`.verdict`).

``bench paper ls`` lists them. Each paper is one YAML file under ``papers/data/``; adding a claim or
a table is an edit there, not code.
"""
