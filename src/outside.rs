//! Text set outside the company (a referral's name, its customer's name, both typed by whoever
//! created the referral in Partner Center), typed as such from the pull to the renderer. It has
//! no `Display`: a chat format cannot interpolate it by accident, it must call its own escaper
//! (`alerts::format`); a reader that takes text as text (JSON, the command sink, the terminal,
//! the action page's HTML escaper) asks for [`Outside::unescaped`] by name. A leaf.

use serde::{Deserialize, Serialize};

/// Outside text. Serialized as the plain string, so stored alerts and `--json` output keep
/// their shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Outside(String);

impl Outside {
    pub(crate) fn new(text: impl Into<String>) -> Outside {
        Outside(text.into())
    }

    /// The text as it came, for a reader that does not interpret markup (or escapes it itself).
    pub(crate) fn unescaped(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Outside {
    fn from(text: &str) -> Outside {
        Outside::new(text)
    }
}

impl From<String> for Outside {
    fn from(text: String) -> Outside {
        Outside(text)
    }
}
