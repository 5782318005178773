"""The paper's tooling on top of nodex: the experiments listing, claims and paper values,
the results report and the reproduction runner. It depends on nodex, never the reverse."""
