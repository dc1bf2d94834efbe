"""``fpe batch``, ``fpe eval`` and ``fpe datasets`` (``cli``): datasets of prompt pairs edited (``batch``), scored
(``metrics``) and reported (``report``); the paper's prompt-pair sets (``datasets``)."""
