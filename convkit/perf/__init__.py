"""Speed: ``bench`` (convkit's session against the frameworks' own runners) and ``peak`` (the machine's
FLOP/s, for % of peak)."""
