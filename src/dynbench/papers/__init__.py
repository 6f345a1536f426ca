"""The seed papers as data: their tables and claims (:mod:`.registry`) and the verdict rule (:mod:`.verdict`).

``bench paper ls`` lists them. Each paper is one YAML file under ``papers/data/``; adding a claim or a
table is an edit there, not code.
"""
