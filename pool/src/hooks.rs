//! The pool's hooks: which events have one, and the one rule for a hook's name, shared
//! by the config check (pmctl, the daemons) and the agent's hook runner, so a name the
//! config accepts is a name the agent runs.

use pm_proto::Hooks;

/// Longest hook name.
pub const MAX_HOOK_LEN: usize = 255;

/// Which hook fires, with DESIGN.md's `EVENT` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookEvent {
    /// An instance was created.
    Create,
    /// pm deleted an instance.
    Delete,
    /// An instance vanished without pm deleting it.
    Vanished,
    /// A create failed with a stockout.
    Exhausted,
    /// An instance was preempted.
    Preempted,
    /// pm started removing an instance on purpose.
    Drain,
}

impl HookEvent {
    /// Every event, in the order of the config's `hooks` fields.
    pub const ALL: [HookEvent; 6] = [
        HookEvent::Create,
        HookEvent::Delete,
        HookEvent::Vanished,
        HookEvent::Exhausted,
        HookEvent::Preempted,
        HookEvent::Drain,
    ];

    /// The `EVENT` value and the config's field name: `create`, `delete`, `vanished`,
    /// `exhausted`, `preempted`, `drain`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookEvent::Create => "create",
            HookEvent::Delete => "delete",
            HookEvent::Vanished => "vanished",
            HookEvent::Exhausted => "exhausted",
            HookEvent::Preempted => "preempted",
            HookEvent::Drain => "drain",
        }
    }

    /// The hook a pool's `hooks` names for this event (empty: none).
    pub fn name(self, hooks: &Hooks) -> &str {
        match self {
            HookEvent::Create => &hooks.create,
            HookEvent::Delete => &hooks.delete,
            HookEvent::Vanished => &hooks.vanished,
            HookEvent::Exhausted => &hooks.exhausted,
            HookEvent::Preempted => &hooks.preempted,
            HookEvent::Drain => &hooks.drain,
        }
    }

    /// The field of a pool's `hooks` that names this event's hook, to set it.
    pub fn slot(self, hooks: &mut Hooks) -> &mut String {
        match self {
            HookEvent::Create => &mut hooks.create,
            HookEvent::Delete => &mut hooks.delete,
            HookEvent::Vanished => &mut hooks.vanished,
            HookEvent::Exhausted => &mut hooks.exhausted,
            HookEvent::Preempted => &mut hooks.preempted,
            HookEvent::Drain => &mut hooks.drain,
        }
    }

    /// The hook name a pool configured for this event.
    pub fn configured(self, hooks: Option<&Hooks>) -> Option<String> {
        let name = self.name(hooks?);
        (!name.is_empty()).then(|| name.to_string())
    }
}

/// The hook fields of a config, by name.
pub const HOOKS: [&str; 6] = [
    "create",
    "delete",
    "vanished",
    "exhausted",
    "preempted",
    "drain",
];

/// Whether `name` may name a hook: a plain file name in the agent's `--hooks-dir`, at
/// most [`MAX_HOOK_LEN`] of `[A-Za-z0-9._-]`, not hidden (`.`), not an option (`-`), no
/// `..`, so it can never reach outside the directory.
pub fn is_plain_hook_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_HOOK_LEN
        && !name.starts_with(['.', '-'])
        && !name.contains("..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The problem of a configured hook name, worded for the config's author.
pub fn check_hook_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("is empty; leave the hook out for none".into())
    } else if is_plain_hook_name(name) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a plain file name in the agent's --hooks-dir (letters, digits, '.', '_' and '-'; no '/', no '..', not starting with '.' or '-')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_for_hook_names() {
        for ok in ["on-create", "on_create.sh", "a.b", "X1"] {
            assert!(is_plain_hook_name(ok), "{ok}");
            assert_eq!(check_hook_name(ok), Ok(()));
        }
        for bad in [
            "",
            ".on-create",
            "-rf",
            "a..b",
            "../x",
            "bin/x",
            "a b",
            "é",
            &"x".repeat(MAX_HOOK_LEN + 1),
        ] {
            assert!(!is_plain_hook_name(bad), "{bad}");
            assert!(check_hook_name(bad).is_err(), "{bad}");
        }
        assert!(check_hook_name("").unwrap_err().contains("is empty"));
    }

    #[test]
    fn events_name_their_hooks() {
        let hooks = Hooks {
            create: "c".into(),
            preempted: "p".into(),
            ..Default::default()
        };
        assert_eq!(HookEvent::Create.configured(Some(&hooks)), Some("c".into()));
        assert_eq!(HookEvent::Delete.configured(Some(&hooks)), None);
        assert_eq!(HookEvent::Preempted.configured(None), None);
        let names: Vec<&str> = HookEvent::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(names, HOOKS);
    }
}
