"""The worker side of the protocol: runs inside a framework's environment, standard library only, never
imports convkit. Nothing in the core process imports this package; ``client`` starts it by path."""
