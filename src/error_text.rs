//! Errors as the one line an operator reads.

/// An error with its causes, `a: b: c`: tonic, hyper and reqwest keep the
/// useful part ("connection refused") in their sources.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // hyper repeats the io error's text in its own: keep it once.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Layer {
        text: &'static str,
        #[source]
        cause: Option<Box<Layer>>,
    }

    #[test]
    fn causes_are_joined_once_each() {
        let inner = Layer {
            text: "connection refused",
            cause: None,
        };
        let middle = Layer {
            text: "tcp connect error: connection refused",
            cause: Some(Box::new(inner)),
        };
        let outer = Layer {
            text: "transport error",
            cause: Some(Box::new(middle)),
        };
        assert_eq!(
            error_chain(&outer),
            "transport error: tcp connect error: connection refused"
        );
    }
}
