"""`ganrec bench ...`: the benchmarks, at the operations level. Each prints a table, writes JSON
(and a PNG where a person would rather look) and measures its baseline in the same run."""
