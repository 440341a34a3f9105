//! A segment rule compiled from CEL: the only module that sees the `cel` crate (and the `chrono` types its
//! values carry). The rest of the crate sees [`Rule`], [`Reading`] and the crate's [`Error`].
//!
//! Guarantees:
//! - A rule is parsed and checked once ([`Rule::compile_within`]) and then shared: a [`Rule`] is an `Arc`
//!   around the compiled program (`cel::Program` is `Send + Sync`), so clones are cheap and many threads
//!   evaluate one rule at once (tested).
//! - Every syntax error carries its position (1-based line and column, columns in characters), and so does
//!   a `duration(...)` or `timestamp(...)` literal that CEL cannot read (`duration("7d")`: CEL has no day
//!   unit, write `"168h"`), which is checked at compile time instead of failing on every evaluation.
//! - [`Rule::reads`] is the set of feature names the rule can read, found on the parsed expression (every
//!   identifier, and every dotted prefix of a field selection such as `user.plan`, since CEL resolves a
//!   dotted name to the longest bound prefix), minus `now` and the variables that macros such as
//!   `all`/`exists` bind. It is a superset of what one evaluation reads, which is what a dependency index
//!   needs: a rule is never missed when one of its features changes.
//! - Evaluation never panics and never errors for a missing feature: a feature with no visible value is not
//!   bound, and if the rule's result depends on it, the result is `false` ("no data" is "not a member").
//!   CEL's logical operators absorb errors when the other side decides (`absent > 1 || true` is `true`,
//!   `absent > 1 && false` is `false`). Any other run-time failure (a type error such as comparing a string
//!   with a number, `int + double`, division by zero, a result that is not a bool) is an
//!   [`Error::RuleEvaluation`]. The interpreter call is also wrapped in `catch_unwind`, so a bug in the
//!   interpreter becomes that error too, not a crash of the node.
//!
//! Caveats:
//! - Positions come only with parse errors: the `cel` interpreter's run-time errors carry no position (they
//!   name the operator and the types, e.g. `found no matching overload for '_>_' applied to '(string,
//!   int)'`).
//! - `cel` 0.15 has no type checker (cel-go's `Env.Check`), so type errors surface at evaluation. Numbers
//!   compare across int and double (`2.0 >= 1`), but arithmetic does not mix them (`2.0 + 1` fails).
//! - Feature names that are not CEL identifiers (names with `:` or `-`) cannot be read by a rule; names with
//!   dots are read as qualified names (`user.plan`).
//! - The `cel` parser and interpreter recurse once per level of nesting, and their frames are large (in a
//!   debug build, measured: about 180 KB per bracket level in the ANTLR-generated parser, so 11 levels
//!   overflow a 2 MiB stack; about 38 KB per expression level in the interpreter, 53 levels in 2 MiB). So a
//!   rule's nesting is bounded by `max_rule_depth` (default 24, at most 32) twice: on its text before it is
//!   parsed (brackets and `?:`), and on its parsed expression (`x + x + ... + x` nests as deep as it is
//!   long; `&&`/`||` chains are balanced by the parser). Parsing runs on a scoped thread with a 64 MiB stack
//!   (compiling is rare: start-up and definition changes), evaluation on the caller's thread. The walk over
//!   the expression here uses an explicit stack.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, LazyLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};

use crate::error::{truncate_for_error, Error, Result};
use crate::limits::Limits;
use crate::segment::Reading;

/// The variable bound to the evaluation instant.
pub const NOW: &str = "now";

/// The CEL environment every rule is compiled and run with: the standard library (with `matches`, and
/// `duration`/`timestamp`), built once per process.
static ENV: LazyLock<Arc<cel::Env>> = LazyLock::new(|| Arc::new(cel::Env::stdlib()));

/// A compiled, shareable segment rule.
#[derive(Clone)]
pub struct Rule {
    inner: Arc<Compiled>,
}

struct Compiled {
    name: String,
    text: String,
    program: cel::Program,
    reads: BTreeSet<String>,
    /// Root identifiers (the first segment of each name read): what an undeclared reference names.
    roots: BTreeSet<String>,
    reads_now: bool,
    durations_ms: Vec<i64>,
    instants_ms: Vec<i64>,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("name", &self.inner.name)
            .field("text", &self.inner.text)
            .finish()
    }
}

impl PartialEq for Rule {
    /// Two rules are equal when they have the same name and text (they then compile to the same program).
    fn eq(&self, other: &Rule) -> bool {
        self.inner.name == other.inner.name && self.inner.text == other.inner.text
    }
}

impl Eq for Rule {}

/// 1-based line and column (in characters) of the byte `offset` of `text` (the parser's node offsets are
/// bytes; its error positions are already characters).
fn line_column(text: &str, offset: usize) -> (u32, u32) {
    let (mut line, mut column) = (1u32, 1u32);
    for (_, c) in text.char_indices().take_while(|(at, _)| *at < offset) {
        if c == '\n' {
            line = line.saturating_add(1);
            column = 1;
        } else {
            column = column.saturating_add(1);
        }
    }
    (line, column)
}

fn invalid(name: &str, (line, column): (u32, u32), reason: String) -> Error {
    Error::InvalidRule {
        segment: truncate_for_error(name),
        line,
        column,
        in_file: false,
        reason,
    }
}

/// Runs the one-argument CEL function `function` (`duration` or `timestamp`) on the string `text`, the
/// way the rule itself would at evaluation.
fn literal(function: &str, text: &str) -> std::result::Result<cel::Value, String> {
    let program = ENV
        .compile(&format!("{function}(s)"))
        .map_err(|e| e.to_string())?;
    let mut context = cel::Context::with_env(Arc::clone(&ENV));
    context.add_variable_from_value("s", cel::Value::String(Arc::new(text.to_owned())));
    program.execute(&context).map_err(|e| e.to_string())
}

/// What the walk over a parsed expression collects.
#[derive(Default)]
struct Found {
    reads: BTreeSet<String>,
    roots: BTreeSet<String>,
    durations_ms: BTreeSet<i64>,
    instants_ms: BTreeSet<i64>,
    /// A literal CEL cannot read: its expression id and the reason.
    bad_literal: Option<(u64, String)>,
    /// The deepest nesting of the expression tree (a lone literal or name is 1).
    depth: usize,
}

/// The dotted name an identifier or a chain of field selections on one spells (`a.b.c`).
fn qualified(expr: &IdedExpr) -> Option<Vec<&str>> {
    let mut segments = Vec::new();
    let mut at = expr;
    loop {
        match &at.expr {
            Expr::Ident(name) => {
                segments.push(name.as_str());
                segments.reverse();
                return Some(segments);
            }
            Expr::Select(s) if !s.test => {
                segments.push(s.field.as_str());
                at = &s.operand;
            }
            _ => return None,
        }
    }
}

/// Walks the expression with an explicit stack (no recursion on untrusted depth).
fn walk(root: &IdedExpr) -> Found {
    let mut found = Found::default();
    // Each entry: an expression and the variables bound around it by enclosing comprehensions.
    let mut stack: Vec<(&IdedExpr, Arc<BTreeSet<String>>, usize)> = vec![(root, Arc::default(), 1)];
    while let Some((node, bound, depth)) = stack.pop() {
        found.depth = found.depth.max(depth);
        let below = depth + 1;
        let name = |segments: Vec<&str>, found: &mut Found| {
            let Some(first) = segments.first() else {
                return;
            };
            if first.starts_with('@') || bound.contains(*first) {
                return;
            }
            // The interpreter resolves a dotted name in a loop, but count each selection as a level anyway.
            found.depth = found.depth.max(depth + segments.len() - 1);
            found.roots.insert((*first).to_owned());
            for end in 1..=segments.len() {
                found.reads.insert(segments[..end].join("."));
            }
        };
        match &node.expr {
            Expr::Unspecified | Expr::Literal(_) => {}
            Expr::Ident(_) | Expr::Select(_) => {
                if let Some(segments) = qualified(node) {
                    name(segments, &mut found);
                } else if let Expr::Select(s) = &node.expr {
                    // `has(a.b)`: the operand's name and the field tested on it.
                    if let Some(mut segments) = qualified(&s.operand) {
                        segments.push(s.field.as_str());
                        name(segments, &mut found);
                    } else {
                        stack.push((&s.operand, bound, below));
                    }
                }
            }
            Expr::Call(call) => {
                let is_literal_call = call.target.is_none()
                    && call.args.len() == 1
                    && matches!(call.func_name.as_str(), "duration" | "timestamp");
                if is_literal_call {
                    if let Some(arg) = call.args.first() {
                        if let Expr::Literal(LiteralValue::String(text)) = &arg.expr {
                            match (
                                call.func_name.as_str(),
                                literal(&call.func_name, text.inner()),
                            ) {
                                ("duration", Ok(cel::Value::Duration(d))) => {
                                    found.durations_ms.insert(d.num_milliseconds());
                                }
                                ("timestamp", Ok(cel::Value::Timestamp(t))) => {
                                    found.instants_ms.insert(t.timestamp_millis());
                                }
                                (_, Ok(other)) => {
                                    found.bad_literal.get_or_insert((
                                        arg.id,
                                        format!("unexpected literal value {other:?}"),
                                    ));
                                }
                                (_, Err(reason)) => {
                                    found.bad_literal.get_or_insert((arg.id, reason));
                                }
                            }
                        }
                    }
                }
                if let Some(target) = &call.target {
                    stack.push((target, Arc::clone(&bound), below));
                }
                for arg in &call.args {
                    stack.push((arg, Arc::clone(&bound), below));
                }
            }
            Expr::Comprehension(c) => {
                stack.push((&c.iter_range, Arc::clone(&bound), below));
                stack.push((&c.accu_init, Arc::clone(&bound), below));
                let mut inner = (*bound).clone();
                inner.insert(c.iter_var.clone());
                if let Some(v) = &c.iter_var2 {
                    inner.insert(v.clone());
                }
                inner.insert(c.accu_var.clone());
                let inner = Arc::new(inner);
                for e in [&c.loop_cond, &c.loop_step, &c.result] {
                    stack.push((e, Arc::clone(&inner), below));
                }
            }
            Expr::List(list) => {
                for e in &list.elements {
                    stack.push((e, Arc::clone(&bound), below));
                }
            }
            Expr::Map(cel::common::ast::MapExpr { entries, .. })
            | Expr::Struct(cel::common::ast::StructExpr { entries, .. }) => {
                for entry in entries {
                    match &entry.expr {
                        EntryExpr::StructField(f) => {
                            stack.push((&f.value, Arc::clone(&bound), below))
                        }
                        EntryExpr::MapEntry(m) => {
                            stack.push((&m.key, Arc::clone(&bound), below));
                            stack.push((&m.value, Arc::clone(&bound), below));
                        }
                    }
                }
            }
        }
    }
    found
}

/// A reading as a CEL value (`None` for [`Reading::Absent`], which is left unbound).
fn to_cel(reading: &Reading) -> Option<std::result::Result<cel::Value, String>> {
    Some(Ok(match reading {
        Reading::Absent => return None,
        Reading::Int(i) => cel::Value::Int(*i),
        Reading::Number(f) => cel::Value::Float(*f),
        Reading::Bool(b) => cel::Value::Bool(*b),
        Reading::Text(s) => cel::Value::String(Arc::new(s.clone())),
        Reading::Time(ms) => return Some(timestamp(*ms)),
    }))
}

fn timestamp(ms: u64) -> std::result::Result<cel::Value, String> {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| cel::Value::Timestamp(t.fixed_offset()))
        .ok_or_else(|| format!("instant {ms} ms is outside the range of CEL timestamps"))
}

/// An instant (Unix ms) in RFC 3339, UTC, with milliseconds (as the why-trace shows it).
pub fn format_time(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// The stack of the thread a rule is parsed on. The parser `cel` generates with ANTLR recurses through
/// about fifteen grammar rules per level of brackets (measured about 180 KB per level in a debug build,
/// where 11 levels overflow a 2 MiB stack), so parsing runs on a thread of its own with this much (address
/// space, committed only as it is touched), and the nesting is bounded by `max_rule_depth` before parsing.
const PARSER_STACK_BYTES: usize = 64 << 20;

/// How deep `text` nests for the parser: the deepest bracket nesting plus the number of `?` (each
/// conditional nests the parser once more), outside string literals. A conservative bound: brackets in
/// `//` comments count too.
fn text_nesting(text: &str) -> usize {
    let bytes = text.as_bytes();
    let (mut depth, mut deepest, mut conditionals) = (0usize, 0usize, 0usize);
    let mut i = 0;
    while let Some(&c) = bytes.get(i) {
        if c == b'"' || c == b'\'' {
            let raw = i > 0 && matches!(bytes.get(i - 1), Some(b'r' | b'R'));
            let triple = [c, c, c];
            let quote: &[u8] = if bytes[i..].starts_with(&triple) {
                &triple
            } else {
                &triple[..1]
            };
            i += quote.len();
            while i < bytes.len() && !bytes[i..].starts_with(quote) {
                i += if bytes[i] == b'\\' && !raw { 2 } else { 1 };
            }
            i += quote.len();
            continue;
        }
        match c {
            b'(' | b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b'?' => conditionals += 1,
            _ => {}
        }
        i += 1;
    }
    deepest + conditionals
}

/// The position and message of a parse failure, taken apart on the parser's thread.
type ParseFailure = ((u32, u32), String);

/// Parses `text` on a thread with [`PARSER_STACK_BYTES`] of stack.
fn parse(text: &str) -> std::result::Result<cel::Program, ParseFailure> {
    let parse_here = || {
        ENV.compile(text).map_err(|errors| {
            let first = errors.errors.first();
            let at = first.map_or((1, 1), |e| {
                (
                    u32::try_from(e.pos.0.max(1)).unwrap_or(u32::MAX),
                    u32::try_from(e.pos.1.max(1)).unwrap_or(u32::MAX),
                )
            });
            (
                at,
                first.map_or_else(|| errors.to_string(), |e| e.msg.clone()),
            )
        })
    };
    std::thread::scope(|scope| {
        let parser = std::thread::Builder::new()
            .name("cel-parse".into())
            .stack_size(PARSER_STACK_BYTES)
            .spawn_scoped(scope, parse_here)
            .map_err(|e| ((1, 1), format!("could not start the rule parser: {e}")))?;
        parser
            .join()
            .unwrap_or_else(|_| Err(((1, 1), "the CEL parser panicked".into())))
    })
}

impl Rule {
    /// Parses and checks the CEL rule `text` of the segment `name` under the default limits (see
    /// [`Rule::compile_within`]).
    pub fn compile(name: &str, text: &str) -> Result<Rule> {
        Rule::compile_within(name, text, &Limits::default())
    }

    /// Parses and checks the CEL rule `text` of the segment `name`: at most `max_rule_bytes` long
    /// ([`Error::RuleTooLong`]) and `max_rule_depth` deep ([`Error::RuleTooDeep`]); syntax errors and
    /// unreadable `duration`/`timestamp` literals are [`Error::InvalidRule`] with their position in `text`.
    pub fn compile_within(name: &str, text: &str, limits: &Limits) -> Result<Rule> {
        if text.len() > limits.max_rule_bytes {
            return Err(Error::RuleTooLong {
                segment: truncate_for_error(name),
                len: text.len(),
                max: limits.max_rule_bytes,
            });
        }
        let too_deep = |depth| Error::RuleTooDeep {
            segment: truncate_for_error(name),
            depth,
            max: limits.max_rule_depth,
        };
        let nesting = text_nesting(text);
        if nesting > limits.max_rule_depth {
            return Err(too_deep(nesting));
        }
        let program = parse(text).map_err(|(at, reason)| invalid(name, at, reason))?;
        let found = walk(program.expression());
        if found.depth > limits.max_rule_depth {
            return Err(too_deep(found.depth));
        }
        if let Some((id, reason)) = found.bad_literal {
            let offset = program
                .source_info()
                .offset_for(id)
                .map_or(0, |(start, _)| start as usize);
            return Err(invalid(name, line_column(text, offset), reason));
        }
        let reads_now = found.roots.contains(NOW);
        let mut reads = found.reads;
        reads.remove(NOW);
        let mut roots = found.roots;
        roots.remove(NOW);
        Ok(Rule {
            inner: Arc::new(Compiled {
                name: name.to_owned(),
                text: text.to_owned(),
                program,
                reads,
                roots,
                reads_now,
                durations_ms: found.durations_ms.into_iter().collect(),
                instants_ms: found.instants_ms.into_iter().collect(),
            }),
        })
    }

    /// The segment's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The rule's CEL text.
    pub fn text(&self) -> &str {
        &self.inner.text
    }

    /// The feature names the rule can read (see the module docs): re-evaluate it when one of them changes.
    pub fn reads(&self) -> &BTreeSet<String> {
        &self.inner.reads
    }

    /// Whether the rule reads `now` (its value can change with time alone, besides window expiry).
    pub fn reads_now(&self) -> bool {
        self.inner.reads_now
    }

    /// The `duration("...")` literals of the rule, in ms (rounded towards zero), ascending.
    pub fn durations_ms(&self) -> &[i64] {
        &self.inner.durations_ms
    }

    /// The `timestamp("...")` literals of the rule, in Unix ms, ascending.
    pub fn instants_ms(&self) -> &[i64] {
        &self.inner.instants_ms
    }

    /// Evaluates the rule with each `(name, reading)` bound (absent readings are left unbound) and `now`
    /// at `now_ms`. An absent feature the result depends on makes it `false`; other failures are
    /// [`Error::RuleEvaluation`].
    pub fn eval<'a>(
        &self,
        readings: impl IntoIterator<Item = (&'a str, &'a Reading)>,
        now_ms: u64,
    ) -> Result<bool> {
        let failed = |reason: String| Error::RuleEvaluation {
            segment: truncate_for_error(&self.inner.name),
            reason,
        };
        let mut context = cel::Context::with_env(Arc::clone(&ENV));
        for (name, reading) in readings {
            if let Some(value) = to_cel(reading) {
                context.add_variable_from_value(name, value.map_err(failed)?);
            }
        }
        context.add_variable_from_value(NOW, timestamp(now_ms).map_err(failed)?);
        let outcome = catch_unwind(AssertUnwindSafe(|| self.inner.program.execute(&context)))
            .map_err(|_| failed("the CEL interpreter panicked".into()))?;
        match outcome {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(failed(format!(
                "the rule evaluates to a {}, not a bool",
                other.type_of()
            ))),
            Err(cel::ExecutionError::UndeclaredReference(name))
                if self.inner.roots.contains(name.as_str()) =>
            {
                Ok(false)
            }
            Err(e) => Err(failed(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn rule(text: &str) -> Rule {
        Rule::compile("s", text).expect("compiles")
    }

    fn eval(text: &str, vars: &[(&str, Reading)], now_ms: u64) -> Result<bool> {
        let map: BTreeMap<&str, &Reading> = vars.iter().map(|(n, r)| (*n, r)).collect();
        rule(text).eval(map, now_ms)
    }

    fn position(text: &str) -> (u32, u32, String) {
        match Rule::compile("seg", text) {
            Err(Error::InvalidRule {
                segment,
                line,
                column,
                in_file,
                reason,
            }) => {
                assert_eq!(segment, "seg");
                assert!(!in_file);
                (line, column, reason)
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn syntax_errors_carry_their_position() {
        assert_eq!(position("orders_30m >= ").0, 1);
        assert_eq!(position("orders_30m >= ").1, 15, "the end of the input");
        let (line, column, reason) = position("a &&\n  (b ||");
        assert_eq!((line, column), (2, 8));
        assert!(reason.contains("Syntax error"), "{reason}");
        assert_eq!(position("x == 'abc").1, 6, "the unterminated string");
        assert_eq!(
            position("\"éé\" + )").1,
            8,
            "columns count characters, not bytes"
        );
        assert!(matches!(
            Rule::compile("s", ""),
            Err(Error::InvalidRule { .. })
        ));
    }

    #[test]
    fn unreadable_literals_are_refused_at_compile_time_with_their_position() {
        let (line, column, reason) = position("now - last_cart_add > duration(\"7d\")");
        assert_eq!((line, column), (1, 32), "{reason}");
        assert!(reason.contains("duration"), "{reason}");
        let (line, column, _) = position("a > 1 &&\n  \"é\" == b && now > timestamp('yesterday')");
        assert_eq!((line, column), (2, 31));
        let ok = rule("now - t > duration('1h30m') && now < timestamp('2030-01-01T00:00:00Z')");
        assert_eq!(ok.durations_ms(), &[5_400_000]);
        assert_eq!(ok.instants_ms(), &[1_893_456_000_000]);
    }

    #[test]
    fn reads_are_the_features_named_minus_now_and_macro_variables() {
        let r =
            rule("cart_adds_30m >= 1 && orders_30m == 0 && now - last_cart_add > duration('30m')");
        assert_eq!(
            r.reads().iter().map(String::as_str).collect::<Vec<_>>(),
            ["cart_adds_30m", "last_cart_add", "orders_30m"]
        );
        assert!(r.reads_now());
        let r = rule(
            "[1, 2].all(x, x < limit) && tags.exists(t, t == plan) && user.tier.name == 'gold'",
        );
        assert_eq!(
            r.reads().iter().map(String::as_str).collect::<Vec<_>>(),
            [
                "limit",
                "plan",
                "tags",
                "user",
                "user.tier",
                "user.tier.name"
            ]
        );
        assert!(!r.reads_now());
        let r = rule("has(profile.vip) && size(name) > 2");
        assert!(r.reads().contains("profile.vip") && r.reads().contains("name"));
    }

    #[test]
    fn numbers_compare_across_int_and_double_but_do_not_mix_in_arithmetic() {
        let vars = [("d", Reading::Number(2.0)), ("i", Reading::Int(2))];
        assert_eq!(
            eval("d >= 1 && d == 2 && i == 2.0 && i < 2.5", &vars, 0),
            Ok(true)
        );
        assert!(matches!(
            eval("d + i > 1", &vars, 0),
            Err(Error::RuleEvaluation { .. })
        ));
    }

    #[test]
    fn absent_features_make_the_rule_false_unless_the_rest_decides() {
        assert_eq!(eval("orders > 1", &[], 0), Ok(false));
        assert_eq!(eval("!(orders > 1)", &[], 0), Ok(false));
        assert_eq!(eval("orders > 1 || true", &[], 0), Ok(true));
        assert_eq!(eval("true || orders > 1", &[], 0), Ok(true));
        assert_eq!(
            eval("orders > 1", &[("orders", Reading::Absent)], 0),
            Ok(false)
        );
        assert_eq!(eval("user.plan == 'pro'", &[], 0), Ok(false));
        assert_eq!(
            eval(
                "user.plan == 'pro'",
                &[("user.plan", Reading::Text("pro".into()))],
                0
            ),
            Ok(true),
            "a dotted feature name is read as a qualified name"
        );
        // An unknown function is an error, not an absent feature.
        assert!(matches!(
            eval("nosuch(1)", &[], 0),
            Err(Error::RuleEvaluation { .. })
        ));
    }

    #[test]
    fn run_time_type_errors_are_typed_errors() {
        let vars = [
            ("plan", Reading::Text("pro".into())),
            ("n", Reading::Int(0)),
        ];
        for text in [
            "plan > 1",
            "10 / n > 1",
            "plan",
            "(n + 9223372036854775807) + 1 > 0",
        ] {
            match eval(text, &vars, 0) {
                Err(Error::RuleEvaluation { segment, reason }) => {
                    assert_eq!(segment, "s");
                    assert!(!reason.is_empty());
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn timestamps_and_durations() {
        let t = 1_700_000_000_000u64;
        let vars = [("last_cart_add", Reading::Time(t))];
        let text = "now - last_cart_add > duration('30m')";
        assert_eq!(eval(text, &vars, t + 1_800_000), Ok(false));
        assert_eq!(eval(text, &vars, t + 1_800_001), Ok(true));
        assert_eq!(
            eval("now > timestamp('2023-11-14T22:13:20Z')", &[], t + 1),
            Ok(true)
        );
        assert_eq!(
            eval("now.getFullYear() == 2023", &[], t),
            Ok(true),
            "now is a CEL timestamp"
        );
        assert_eq!(format_time(t), "2023-11-14T22:13:20.000Z");
    }

    #[test]
    fn a_rule_is_compiled_once_and_shared_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Rule>();
        let r = rule("n % 7 == 3");
        let handles: Vec<_> = (0..4)
            .map(|k| {
                let r = r.clone();
                std::thread::spawn(move || {
                    (0..200i64)
                        .filter(|i| {
                            let n = Reading::Int(i * 4 + k);
                            r.eval([("n", &n)], 0).unwrap_or(false)
                        })
                        .count()
                })
            })
            .collect();
        let total: usize = handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .sum();
        assert_eq!(total, (0..800).filter(|n| n % 7 == 3).count());
    }

    #[test]
    fn deep_rules_are_refused_before_they_can_overflow_the_stack() {
        let limits = Limits::default();
        let max = limits.max_rule_depth;
        match Rule::compile("s", &"(".repeat(200)) {
            Err(Error::RuleTooDeep { depth, max: m, .. }) => assert_eq!((depth, m), (200, max)),
            other => panic!("refused before the parser recurses: {other:?}"),
        }
        let chain = vec!["x"; 1500].join("+");
        assert!(
            matches!(
                Rule::compile("s", &format!("{chain} > 0")),
                Err(Error::RuleTooDeep { .. })
            ),
            "deep by its parsed expression"
        );
        let conditionals = format!(
            "{}true{}",
            "x > 0 ? ".repeat(max + 1),
            " : false".repeat(max + 1)
        );
        assert!(matches!(
            Rule::compile("s", &conditionals),
            Err(Error::RuleTooDeep { .. })
        ));
        assert_eq!(
            text_nesting(r#"f('((((' + "[[\"" + r'\' + '''(('''  + x[0])"#),
            2,
            "brackets in strings do not count"
        );
        // Long chains the grammar loops over: refused by depth, or shallow; never a crash, parsing or
        // evaluating on a 2 MiB stack.
        let long = limits.max_rule_bytes / 2 - 2;
        for text in [
            format!("x{} > 0", ".a".repeat(long / 2)),
            format!("{}x > 0", "-".repeat(long)),
            format!("{}(x > 0)", "!".repeat(long)),
            format!("x{} > 0", "[0]".repeat(long / 3)),
        ] {
            let r = std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || {
                    Rule::compile("s", &text).map(|r| r.eval([("x", &Reading::Int(1))], 0))
                })
                .expect("spawns")
                .join()
                .expect("no overflow");
            assert!(
                matches!(r, Err(Error::RuleTooDeep { .. }) | Ok(Ok(_))),
                "{r:?}"
            );
        }
        // A long logical chain is balanced by the parser: within the length limit, and shallow.
        let wide = vec!["x > 0"; 400].join(" && ");
        assert!(wide.len() <= limits.max_rule_bytes);
        assert_eq!(rule(&wide).eval([("x", &Reading::Int(1))], 0), Ok(true));
        // The deepest rules the ceiling allows (nested calls, nested macros, an arithmetic chain) parse,
        // and evaluate on a thread with the 2 MiB a test or tokio worker thread has, in a debug build too.
        let ceiling = Limits {
            max_rule_depth: crate::limits::RULE_DEPTH_CEILING,
            ..Limits::default()
        };
        let levels = ceiling.max_rule_depth;
        let mut macros = "x > 0".to_owned();
        for i in 0..(levels - 3) / 2 {
            macros = format!("[1].all(v{i}, {macros})");
        }
        let texts = [
            format!(
                "{}x{} > 0",
                "int(".repeat(levels - 3),
                ")".repeat(levels - 3)
            ),
            macros,
            format!("{} > 0", vec!["x"; levels - 2].join(" + ")),
        ];
        for text in texts {
            let r = Rule::compile_within("s", &text, &ceiling).expect("within the ceiling");
            assert!(
                walk(r.inner.program.expression()).depth >= levels - 2,
                "{text}"
            );
            let value = std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || r.eval([("x", &Reading::Int(1))], 0))
                .expect("spawns")
                .join()
                .expect("no overflow");
            assert_eq!(value, Ok(true), "{text}");
        }
    }
}
