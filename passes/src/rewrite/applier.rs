//! The shape-checked applier: every rule's right-hand side goes through it, so no rewrite ever
//! builds an ill-shaped node or merges e-classes of different types.
//!
//! An application first runs the rule's guard (which may refuse the match and may compute
//! attribute values, such as a new shape, for variables of the right-hand side), then infers the
//! type of every node of the right-hand side from its children without touching the e-graph
//! (reshapes must keep their symbolic element count), checks that the root's type equals the
//! matched e-class's type, and only then adds the nodes and merges.

use super::analysis::{infer, Attr, ClassData, ShapeAnalysis, TensorGraph};
use super::lang::TensorLang;
use egg::{Applier, ENodeOrVar, Id, Language, Pattern, PatternAst, Subst, Symbol, Var};
use tttc_ir::{Dim, TensorType};

/// A named pattern variable (`?x`), without parsing.
pub fn var(name: &str) -> Var {
    Var::from(Symbol::from(name))
}

/// What a guard sees of one match.
pub struct Match<'a> {
    /// The e-graph.
    pub egraph: &'a TensorGraph,
    /// The matched e-class.
    pub eclass: Id,
    /// The bindings of the left-hand side's variables.
    pub subst: &'a Subst,
}

impl Match<'_> {
    /// The analysis data of a bound variable.
    pub fn data(&self, v: Var) -> Option<&ClassData> {
        self.subst.get(v).map(|&id| &self.egraph[id].data)
    }

    /// The tensor type of a bound variable.
    pub fn ty(&self, v: Var) -> Option<&TensorType> {
        self.data(v).and_then(ClassData::tensor)
    }

    /// The (possibly symbolic) dimensions of a bound variable.
    pub fn dims(&self, v: Var) -> Option<&[Dim]> {
        self.ty(v).map(|t| t.shape.0.as_slice())
    }

    /// The value of a bound scalar constant.
    pub fn konst(&self, v: Var) -> Option<f64> {
        self.data(v).and_then(ClassData::konst)
    }

    /// The attribute bound to a variable.
    pub fn attr(&self, v: Var) -> Option<&Attr> {
        match self.data(v)? {
            ClassData::Attr(a) => Some(a),
            _ => None,
        }
    }

    /// The permutation bound to a variable.
    pub fn perm(&self, v: Var) -> Option<&[usize]> {
        match self.attr(v)? {
            Attr::Perm(p) => Some(p),
            _ => None,
        }
    }
}

/// A guard: `None` refuses the match; `Some(attrs)` accepts it and binds the listed
/// right-hand-side variables to attribute values.
pub type Guard = Box<dyn Fn(&Match<'_>) -> Option<Vec<(Var, Attr)>> + Send + Sync>;

/// The shape-checked applier of one rule.
pub struct Checked {
    rhs: PatternAst<TensorLang>,
    guard: Option<Guard>,
}

impl Checked {
    /// An applier instantiating `rhs` (pattern syntax), after `guard` accepts the match.
    pub fn new(rhs: &str, guard: Option<Guard>) -> Result<Self, String> {
        let pattern: Pattern<TensorLang> = rhs
            .parse()
            .map_err(|e| format!("bad right-hand side `{rhs}`: {e}"))?;
        Ok(Checked {
            rhs: pattern.ast,
            guard,
        })
    }
}

/// Instantiates `rhs` for `subst` (plus attribute bindings) if every node it would build is
/// well-typed and the root has the type of `eclass`; returns the root's e-class. Nothing is
/// added to the e-graph when the check fails.
pub fn instantiate_checked(
    egraph: &mut TensorGraph,
    eclass: Id,
    rhs: &PatternAst<TensorLang>,
    subst: &Subst,
    attrs: &[(Var, Attr)],
) -> Option<Id> {
    let nodes = rhs.as_ref();
    let attr_of = |v: &Var| attrs.iter().find(|(w, _)| w == v).map(|(_, a)| a);
    // Dry run: the type of every node, from its children's.
    let mut datas: Vec<ClassData> = Vec::with_capacity(nodes.len());
    for n in nodes {
        let d = match n {
            ENodeOrVar::Var(v) => match attr_of(v) {
                Some(a) => ClassData::Attr(a.clone()),
                None => egraph[*subst.get(*v)?].data.clone(),
            },
            ENodeOrVar::ENode(e) => infer(e, |c| &datas[usize::from(c)], true).ok()?,
        };
        if matches!(d, ClassData::Invalid(_)) {
            return None;
        }
        datas.push(d);
    }
    match (datas.last()?, &egraph[eclass].data) {
        (ClassData::Tensor { ty: a, .. }, ClassData::Tensor { ty: b, .. }) if a == b => {}
        _ => return None,
    }
    let mut ids: Vec<Id> = Vec::with_capacity(nodes.len());
    for n in nodes {
        let id = match n {
            ENodeOrVar::Var(v) => match attr_of(v) {
                Some(a) => egraph.add(a.node()),
                None => *subst.get(*v)?,
            },
            ENodeOrVar::ENode(e) => {
                let node = e.clone().map_children(|c| ids[usize::from(c)]);
                egraph.add(node)
            }
        };
        ids.push(id);
    }
    ids.last().copied()
}

impl Applier<TensorLang, ShapeAnalysis> for Checked {
    fn apply_one(
        &self,
        egraph: &mut TensorGraph,
        eclass: Id,
        subst: &Subst,
        _searcher_ast: Option<&PatternAst<TensorLang>>,
        _rule_name: Symbol,
    ) -> Vec<Id> {
        let attrs = match &self.guard {
            Some(guard) => {
                let m = Match {
                    egraph,
                    eclass,
                    subst,
                };
                match guard(&m) {
                    Some(attrs) => attrs,
                    None => return Vec::new(),
                }
            }
            None => Vec::new(),
        };
        match instantiate_checked(egraph, eclass, &self.rhs, subst, &attrs) {
            Some(root) if egraph.union(eclass, root) => vec![eclass],
            _ => Vec::new(),
        }
    }
}
