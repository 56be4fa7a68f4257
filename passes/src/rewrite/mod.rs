//! Equality saturation with egg: the dual form and simplification. (in progress)
