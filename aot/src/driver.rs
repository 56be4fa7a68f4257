//! What the session code takes from tttc's driver: the settings and the precision.

pub use tttc_ir::Settings;
use tttc_runtime::ElemType;

/// The element type a library computes in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// Single precision.
    #[default]
    F32,
    /// Double precision.
    F64,
}

impl Precision {
    /// The runtime element type.
    pub fn elem(self) -> ElemType {
        match self {
            Precision::F32 => ElemType::F32,
            Precision::F64 => ElemType::F64,
        }
    }
}
