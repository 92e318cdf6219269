"""The administrators' web console: the node's state, its routing as forms, tests of its peers."""
