//! Graph rewrites. Each pass is a verb-named function in its own file that returns whether it
//! changed anything; [`simplify`] runs the simplification pipeline as one literal list.
