"""The forward pass as a jaxpr: walking it, what each op costs, which values are params leaves.

``walk`` follows every value of a traced forward pass (which params leaf it comes from, whether
it depends on the input, its provably-zero entries) and tallies the convolutions and matrix
products; ``costs`` counts their MACs; ``zeros`` propagates zero patterns. ``sbjax.metrics``
builds its reports on these, and ``sbjax.Selection.from_model`` finds the classifier with them.
"""
