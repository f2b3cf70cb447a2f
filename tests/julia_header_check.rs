//! Julia cannot be installed where the tests run, so the Julia binding is checked against the C
//! header instead: every `ccall((:tl_..., lib), Ret, (Args...,), args...)` in
//! bindings/julia/TransferLens/src must name a function of include/transferlens.h, pass as many
//! arguments as the function takes, and use Julia types that match the C types (Int32/Cint for
//! int32_t, UInt32 for enums, Csize_t for size_t, UInt64, Float64/Cdouble, Ptr{..}/Ref{..} for
//! pointers, Cstring/Ptr{UInt8} for char*, Ptr{Cvoid} for a callback, Ptr{Cvoid} or Any for
//! void* user data); every header function must be wrapped; each Julia mirror of a C struct
//! (TLMatrix for tl_matrix, ...) must have the same fields with matching types; every struct the
//! header passes must have a mirror; and a struct whose first field is `size` must be built with
//! `sizeof(mirror)` somewhere in the sources. The unit tests at the end feed the check
//! deliberately wrong snippets.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Julia structs that mirror C structs field for field.
const MIRRORS: &[(&str, &str)] = &[
    ("TLMatrix", "tl_matrix"),
    ("TLTensor", "tl_tensor"),
    ("ModuleGeometry", "tl_module_geometry"),
    ("Metrics", "tl_metrics"),
    ("BarrierResult", "tl_barrier_result"),
    ("CriticalityOptions", "tl_criticality_options"),
    ("Criticality", "tl_criticality"),
    ("NetworkSummary", "tl_network_summary"),
    ("CriticalityReport", "tl_criticality_report"),
    ("NetworkReport", "tl_network_report"),
    ("BoundReport", "tl_bound_report"),
    ("TrainOptions", "tl_train_options"),
    ("AlignOptions", "tl_align_options"),
    ("CkaStatsOptions", "tl_cka_stats_options"),
    ("CkaStatsReport", "tl_cka_stats_report"),
];

/// A type in a form both languages map to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ty {
    Void,
    Scalar(&'static str), // i32, u32, u64, usize, f64, ...
    Char,
    Struct(String), // a C struct with a body (mirrored in Julia)
    Opaque(String), // a C struct without a body: a handle
    Ptr(Box<Ty>),
    Object, // Julia's `Any`: a jl_value_t*, allowed for void* only (callback user data)
}

impl std::fmt::Display for Ty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ty::Void => write!(f, "void"),
            Ty::Scalar(s) => write!(f, "{s}"),
            Ty::Char => write!(f, "char"),
            Ty::Struct(s) => write!(f, "struct {s}"),
            Ty::Opaque(s) => write!(f, "opaque {s}"),
            Ty::Ptr(t) => write!(f, "{t}*"),
            Ty::Object => write!(f, "a Julia object"),
        }
    }
}

/// Whether a Julia type may stand for a C type across ccall.
fn compatible(c: &Ty, julia: &Ty) -> bool {
    match (c, julia) {
        (Ty::Ptr(a), Ty::Ptr(b)) => compatible(a, b),
        // `Any` passes a Julia object's address: only where C takes void* (user data).
        (Ty::Ptr(a), Ty::Object) => **a == Ty::Void,
        // A handle is a Ptr{Cvoid} in Julia; Cvoid is void.
        (Ty::Opaque(_) | Ty::Void, Ty::Void) => true,
        // char* may be Cstring, Ptr{UInt8} or Ptr{Cchar}.
        (Ty::Char, Ty::Char | Ty::Scalar("u8") | Ty::Scalar("i8")) => true,
        (a, b) => a == b,
    }
}

// ---- C side ---------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Header {
    functions: BTreeMap<String, (Ty, Vec<Ty>)>,
    structs: BTreeMap<String, Vec<(String, Ty)>>,
}

fn strip_c_comments(src: &str) -> String {
    let mut out = String::new();
    let mut rest = src;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map_or("", |(_, after)| after);
            out.push(' ');
        } else if let Some(r) = rest.strip_prefix("//") {
            rest = r.split_once('\n').map_or("", |(_, after)| after);
            out.push('\n');
        } else {
            let ch = rest.chars().next().unwrap();
            out.push(ch);
            rest = &rest[ch.len_utf8()..];
        }
    }
    // Preprocessor lines and the C++ guard (`extern "C" {` ... `}`) carry no declarations.
    out.lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.trim() != "}")
        .map(|l| l.replace("extern \"C\" {", " "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Splits at `sep` outside (), {} and [].
fn split_top(s: &str, sep: char) -> Vec<String> {
    let (mut depth, mut cur, mut out) = (0i32, String::new(), Vec::new());
    for ch in s.chars() {
        match ch {
            '(' | '{' | '[' => depth += 1,
            ')' | '}' | ']' => depth -= 1,
            _ => {}
        }
        if ch == sep && depth == 0 {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(ch);
        }
    }
    out.push(cur);
    out
}

/// The names the header declares: enums, structs with a body, function-pointer typedefs.
#[derive(Debug, Default)]
struct Names {
    enums: BTreeSet<String>,
    bodies: BTreeSet<String>,
    fn_ptrs: BTreeSet<String>,
}

fn parse_c_type(words: &[&str], pointers: usize, names: &Names) -> Ty {
    let words: Vec<&str> = words.iter().copied().filter(|w| !matches!(*w, "const" | "struct" | "enum")).collect();
    let base = match words.join(" ").as_str() {
        "void" => Ty::Void,
        "char" => Ty::Char,
        "int8_t" | "signed char" => Ty::Scalar("i8"),
        "uint8_t" | "unsigned char" => Ty::Scalar("u8"),
        "int16_t" => Ty::Scalar("i16"),
        "uint16_t" => Ty::Scalar("u16"),
        "int32_t" | "int" => Ty::Scalar("i32"),
        "uint32_t" | "unsigned" | "unsigned int" => Ty::Scalar("u32"),
        "int64_t" => Ty::Scalar("i64"),
        "uint64_t" => Ty::Scalar("u64"),
        "size_t" => Ty::Scalar("usize"),
        "ptrdiff_t" => Ty::Scalar("isize"),
        "double" => Ty::Scalar("f64"),
        "float" => Ty::Scalar("f32"),
        "bool" => Ty::Scalar("bool"),
        name if names.enums.contains(name) => Ty::Scalar("u32"), // enums cross as UInt32
        name if names.bodies.contains(name) => Ty::Struct(name.to_string()),
        // A callback crosses as a Ptr{Cvoid} (from @cfunction).
        name if names.fn_ptrs.contains(name) => Ty::Ptr(Box::new(Ty::Void)),
        name if name.starts_with("tl_") && !name.contains(' ') => Ty::Opaque(name.to_string()),
        other => panic!("the check does not know the C type '{other}': teach parse_c_type"),
    };
    (0..pointers).fold(base, |t, _| Ty::Ptr(Box::new(t)))
}

/// A declaration `type name` (or just `type`) as (type, name). An inline function pointer,
/// `ret (*name)(args)`, is a Ptr{Cvoid} like a typedef'd one.
fn parse_c_decl(decl: &str, names: &Names, named: bool) -> (Ty, String) {
    if let Some(at) = decl.find("(*") {
        let rest = &decl[at + 2..];
        let name = rest[..rest.find(')').unwrap_or(rest.len())].trim().to_string();
        return (Ty::Ptr(Box::new(Ty::Void)), name);
    }
    let spaced = decl.replace('*', " * ");
    let mut words: Vec<&str> = spaced.split_whitespace().collect();
    let name = if named { words.pop().unwrap_or_default().to_string() } else { String::new() };
    let pointers = words.iter().filter(|w| **w == "*").count();
    words.retain(|w| *w != "*");
    (parse_c_type(&words, pointers, names), name)
}

fn parse_header(src: &str) -> Header {
    let text = strip_c_comments(src);
    // Enum and struct names, from `typedef enum X {`, `typedef struct X {` and `typedef struct X X;`.
    // Function-pointer typedefs from `typedef ret (*name)(args)`.
    let mut names = Names::default();
    let statements = split_top(&text, ';');
    for st in &statements {
        let words: Vec<&str> = st.split_whitespace().collect();
        if words.len() >= 3 && words[0] == "typedef" && words[1] == "enum" {
            names.enums.insert(words[2].trim_end_matches('{').to_string());
        }
        if words.len() >= 4 && words[0] == "typedef" && words[1] == "struct" && words[3].starts_with('{') {
            names.bodies.insert(words[2].to_string());
        }
        if words.first() == Some(&"typedef") && !st.contains('{') {
            if let Some(at) = st.find("(*") {
                let rest = &st[at + 2..];
                names.fn_ptrs.insert(rest[..rest.find(')').unwrap_or(rest.len())].trim().to_string());
            }
        }
    }
    let mut header = Header::default();
    for st in &statements {
        let st = st.trim();
        if st.is_empty() {
            continue;
        }
        if st.starts_with("typedef") {
            if st.starts_with("typedef struct") {
                if let (Some(open), Some(close)) = (st.find('{'), st.rfind('}')) {
                    let name = st["typedef struct".len()..open].trim().to_string();
                    let fields = split_top(&st[open + 1..close], ';')
                        .iter()
                        .filter(|f| !f.trim().is_empty())
                        .map(|f| {
                            let (ty, name) = parse_c_decl(f, &names, true);
                            (name, ty)
                        })
                        .collect();
                    header.structs.insert(name, fields);
                }
            }
            continue;
        }
        let Some(open) = st.find('(') else { continue };
        let close = st.rfind(')').expect("a declaration with '(' has ')'");
        let (ret, name) = parse_c_decl(&st[..open], &names, true);
        let params_src = st[open + 1..close].trim();
        let params = if params_src == "void" || params_src.is_empty() {
            Vec::new()
        } else {
            split_top(params_src, ',').iter().map(|p| parse_c_decl(p, &names, true).0).collect()
        };
        header.functions.insert(name, (ret, params));
    }
    header
}

// ---- Julia side -----------------------------------------------------------------------------

/// The Julia source without comments (`#` to the end of the line, `#= =#`), strings kept.
fn strip_julia_comments(src: &str) -> String {
    let (mut out, mut chars) = (String::new(), src.chars().peekable());
    let mut in_string = false;
    while let Some(ch) = chars.next() {
        if in_string {
            out.push(ch);
            if ch == '\\' {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            } else if ch == '"' {
                in_string = false;
            }
        } else if ch == '"' {
            in_string = true;
            out.push(ch);
        } else if ch == '#' && chars.peek() == Some(&'=') {
            let mut prev = ' ';
            for c in chars.by_ref() {
                if prev == '=' && c == '#' {
                    break;
                }
                prev = c;
            }
        } else if ch == '#' {
            for c in chars.by_ref() {
                if c == '\n' {
                    out.push('\n');
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

fn parse_julia_type(src: &str, mirrors: &BTreeMap<String, String>) -> Result<Ty, String> {
    let s = src.trim();
    for wrapper in ["Ptr{", "Ref{"] {
        if let Some(inner) = s.strip_prefix(wrapper).and_then(|r| r.strip_suffix('}')) {
            return Ok(Ty::Ptr(Box::new(parse_julia_type(inner, mirrors)?)));
        }
    }
    Ok(match s {
        "Cvoid" | "Nothing" => Ty::Void,
        "Cstring" => Ty::Ptr(Box::new(Ty::Char)),
        "Cchar" => Ty::Char,
        "Int8" => Ty::Scalar("i8"),
        "UInt8" | "Cuchar" => Ty::Scalar("u8"),
        "Int16" | "Cshort" => Ty::Scalar("i16"),
        "UInt16" | "Cushort" => Ty::Scalar("u16"),
        "Int32" | "Cint" => Ty::Scalar("i32"),
        "UInt32" | "Cuint" => Ty::Scalar("u32"),
        "Int64" | "Clonglong" => Ty::Scalar("i64"),
        "UInt64" | "Culonglong" => Ty::Scalar("u64"),
        "Csize_t" => Ty::Scalar("usize"),
        "Cssize_t" | "Cptrdiff_t" => Ty::Scalar("isize"),
        "Float64" | "Cdouble" => Ty::Scalar("f64"),
        "Float32" | "Cfloat" => Ty::Scalar("f32"),
        "Bool" => Ty::Scalar("bool"),
        "Any" => Ty::Object,
        name => match mirrors.get(name) {
            Some(c) => Ty::Struct(c.clone()),
            // Int, UInt, Clong...: sizes that depend on the platform are refused on purpose.
            None => return Err(format!("Julia type '{name}' has no C counterpart the check accepts")),
        },
    })
}

#[derive(Debug)]
struct Ccall {
    name: String,
    line: usize,
    ret: String,
    args: Vec<String>,
    values: usize,
}

/// Every ccall in the source, or a problem for one that cannot be read.
fn find_ccalls(src: &str, problems: &mut Vec<String>) -> Vec<Ccall> {
    let text = strip_julia_comments(src);
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(pos) = text[from..].find("ccall(") {
        let start = from + pos + "ccall(".len();
        from = start;
        let line = text[..start].lines().count();
        // The balanced argument list.
        let mut depth = 1;
        let mut end = start;
        for (i, ch) in text[start..].char_indices() {
            match ch {
                '(' | '{' | '[' => depth += 1,
                ')' | '}' | ']' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end = start + i;
                break;
            }
        }
        let parts: Vec<String> = split_top(&text[start..end], ',').into_iter().map(|p| p.trim().to_string()).collect();
        if parts.len() < 3 {
            problems.push(format!("line {line}: a ccall with fewer than 3 arguments"));
            continue;
        }
        let target = parts[0].trim_start_matches('(').trim_end_matches(')');
        let name = target.split(',').next().unwrap_or("").trim();
        let Some(name) = name.strip_prefix(':') else {
            problems.push(format!("line {line}: ccall target '{}' is not (:name, lib)", parts[0]));
            continue;
        };
        let tuple = parts[2].trim();
        let Some(inner) = tuple.strip_prefix('(').and_then(|t| t.strip_suffix(')')) else {
            problems.push(format!("line {line}: {name}: argument types '{tuple}' are not a tuple"));
            continue;
        };
        let args: Vec<String> =
            split_top(inner, ',').into_iter().map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect();
        out.push(Ccall { name: name.to_string(), line, ret: parts[1].clone(), args, values: parts.len() - 3 });
    }
    out
}

/// Fields `name::Type` of `struct Name ... end` in the Julia source.
fn julia_struct_fields(src: &str, name: &str) -> Option<Vec<(String, String)>> {
    let text = strip_julia_comments(src);
    let start = text.lines().position(|l| {
        let l = l.trim();
        let l = l.strip_prefix("Base.@kwdef ").or_else(|| l.strip_prefix("@kwdef ")).unwrap_or(l);
        l == format!("struct {name}") || l.starts_with(&format!("struct {name} ")) || l == format!("struct {name}{{")
    })?;
    let mut fields = Vec::new();
    for l in text.lines().skip(start + 1) {
        let l = l.trim();
        if l == "end" {
            return Some(fields);
        }
        if let Some((field, ty)) = l.split_once("::") {
            // `@kwdef` defaults: `size::Csize_t = sizeof(...)`.
            let ty = ty.split_once('=').map_or(ty, |(t, _)| t);
            // A field named after a keyword is spelled `var"end"`.
            let field = field.trim();
            let field = field.strip_prefix("var\"").and_then(|f| f.strip_suffix('"')).unwrap_or(field);
            fields.push((field.to_string(), ty.trim().to_string()));
        }
    }
    None
}

/// All problems of the Julia sources against the header; empty when they agree.
fn check(header_src: &str, julia_sources: &[(&str, &str)]) -> Vec<String> {
    check_with(header_src, julia_sources, MIRRORS)
}

/// `check` with the given Julia mirrors of C structs.
fn check_with(header_src: &str, julia_sources: &[(&str, &str)], mirror_list: &[(&str, &str)]) -> Vec<String> {
    let header = parse_header(header_src);
    let mirrors: BTreeMap<String, String> = mirror_list.iter().map(|(j, c)| (j.to_string(), c.to_string())).collect();
    let mut problems = Vec::new();
    let mut wrapped = BTreeSet::new();
    let mut mirrored = BTreeSet::new();
    for (file, src) in julia_sources {
        let mut file_problems = Vec::new();
        for call in find_ccalls(src, &mut file_problems) {
            let at = format!("{file}:{}: {}", call.line, call.name);
            wrapped.insert(call.name.clone());
            let Some((c_ret, c_params)) = header.functions.get(&call.name) else {
                problems.push(format!("{at}: no such function in include/transferlens.h"));
                continue;
            };
            if call.args.len() != c_params.len() {
                problems.push(format!(
                    "{at}: {} argument types in the ccall, {} parameters in the header",
                    call.args.len(),
                    c_params.len()
                ));
            }
            if call.values != call.args.len() {
                problems.push(format!("{at}: {} argument types but {} values", call.args.len(), call.values));
            }
            match parse_julia_type(&call.ret, &mirrors) {
                Ok(t) if compatible(c_ret, &t) => {}
                Ok(t) => problems.push(format!("{at}: returns {c_ret} in C, {} ({t}) in Julia", call.ret)),
                Err(e) => problems.push(format!("{at}: return type: {e}")),
            }
            for (i, (jl, c)) in call.args.iter().zip(c_params).enumerate() {
                match parse_julia_type(jl, &mirrors) {
                    Ok(t) if compatible(c, &t) => {}
                    Ok(t) => problems.push(format!("{at}: argument {}: {c} in C, {jl} ({t}) in Julia", i + 1)),
                    Err(e) => problems.push(format!("{at}: argument {}: {e}", i + 1)),
                }
            }
        }
        problems.extend(file_problems.into_iter().map(|p| format!("{file}: {p}")));
        for (jl_name, c_name) in mirror_list {
            let Some(fields) = julia_struct_fields(src, jl_name) else { continue };
            mirrored.insert(c_name.to_string());
            // Versioned option structs: a leading `size` field the caller sets to the struct's
            // size, so that the library can tell older, shorter layouts apart.
            if header.structs.get(*c_name).and_then(|f| f.first()).is_some_and(|(n, _)| n == "size")
                && !strip_julia_comments(src).contains(&format!("sizeof({jl_name})"))
            {
                problems.push(format!(
                    "{file}: {c_name} starts with a size field: {jl_name} must be built with size = sizeof({jl_name})"
                ));
            }
            let Some(c_fields) = header.structs.get(*c_name) else {
                problems.push(format!("{file}: {jl_name} mirrors {c_name}, which the header does not define"));
                continue;
            };
            if fields.len() != c_fields.len() {
                problems.push(format!("{file}: {jl_name} has {} fields, {c_name} {}", fields.len(), c_fields.len()));
            }
            for ((jn, jt), (cn, ct)) in fields.iter().zip(c_fields) {
                // `Any` is a ccall argument type only: a struct field must be a plain Ptr{Cvoid}.
                let ok =
                    jn == cn && parse_julia_type(jt, &mirrors).is_ok_and(|t| t != Ty::Object && compatible(ct, &t));
                if !ok {
                    problems.push(format!("{file}: {jl_name}.{jn}::{jt} does not match {c_name}.{cn} ({ct})"));
                }
            }
        }
    }
    for name in header.functions.keys() {
        if !wrapped.contains(name) {
            problems.push(format!("{name} is in the header but no Julia ccall wraps it"));
        }
    }
    // Every struct a function takes or returns (by value or through pointers) needs a mirror.
    fn structs_in(t: &Ty, out: &mut BTreeSet<String>) {
        match t {
            Ty::Struct(s) => {
                out.insert(s.clone());
            }
            Ty::Ptr(inner) => structs_in(inner, out),
            _ => {}
        }
    }
    let mut used = BTreeSet::new();
    for (ret, params) in header.functions.values() {
        for t in std::iter::once(ret).chain(params) {
            structs_in(t, &mut used);
        }
    }
    loop {
        let before = used.len();
        for (name, fields) in &header.structs {
            if used.contains(name) {
                let mut inner = BTreeSet::new();
                for (_, t) in fields {
                    structs_in(t, &mut inner);
                }
                used.extend(inner);
            }
        }
        if used.len() == before {
            break;
        }
    }
    for c_name in &used {
        match mirror_list.iter().find(|(_, c)| c == c_name) {
            None => problems
                .push(format!("struct {c_name} is used by the header but has no Julia mirror: add one to MIRRORS")),
            Some((jl_name, _)) if !mirrored.contains(c_name) => {
                problems.push(format!("{jl_name} (the mirror of {c_name}) is not defined in the Julia sources"))
            }
            Some(_) => {}
        }
    }
    problems
}

// ---- the check on the real sources ----------------------------------------------------------

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn julia_binding_matches_the_header() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header = read(&root.join("include/transferlens.h"));
    let src_dir = root.join("bindings/julia/TransferLens/src");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&src_dir)
        .expect("bindings/julia/TransferLens/src exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jl"))
        .map(|p| (p.strip_prefix(root).unwrap().display().to_string(), read(&p)))
        .collect();
    files.sort();
    let sources: Vec<(&str, &str)> = files.iter().map(|(f, s)| (f.as_str(), s.as_str())).collect();
    let problems = check(&header, &sources);
    assert!(problems.is_empty(), "the Julia binding drifted from include/transferlens.h:\n{}", problems.join("\n"));

    // The check saw what it should: every function, and the struct mirror.
    let parsed = parse_header(&header);
    // An independent count: names `tl_x(` that open a line's declaration (not in comments).
    let declared: BTreeSet<String> = header
        .lines()
        .map(str::trim_start)
        .filter(|l| !l.starts_with(['*', '/', '#']))
        .filter_map(|l| {
            let open = l.find('(')?;
            let name = l[..open].rsplit([' ', '*']).next()?;
            name.starts_with("tl_").then(|| name.to_string())
        })
        .collect();
    let parsed_names: BTreeSet<String> = parsed.functions.keys().cloned().collect();
    assert_eq!(parsed_names, declared, "the parser and a line scan disagree on the header's functions");
    assert!(parsed.structs.contains_key("tl_matrix"));
    let calls: usize = sources.iter().map(|(_, s)| find_ccalls(s, &mut Vec::new()).len()).sum();
    println!("{} header functions, {calls} ccalls checked", parsed.functions.len());
}

// ---- the check itself, on deliberately wrong snippets ---------------------------------------

const MINI_HEADER: &str = r#"
typedef enum tl_status { TL_STATUS_OK = 0, TL_STATUS_NULL_ARGUMENT = 1 } tl_status;
typedef struct tl_thing tl_thing; /* opaque */
typedef struct tl_matrix {
  const void *data;
  uint64_t rows;
  int32_t device;
} tl_matrix;
#ifdef __cplusplus
extern "C" {
#endif
const char *tl_name(tl_status status);
enum tl_status tl_thing_create(size_t n, double scale, struct tl_thing **out);
void tl_thing_destroy(struct tl_thing *thing);
enum tl_status tl_thing_use(const struct tl_thing *thing, const struct tl_matrix *m, uint64_t *out);
#ifdef __cplusplus
}
#endif
"#;

const GOOD: &str = r#"
struct TLMatrix
    data::Ptr{Cvoid}
    rows::UInt64
    device::Int32
end
name(s) = unsafe_string(ccall((:tl_name, lib), Cstring, (UInt32,), s)) # a comment with ccall(
function create(n)
    out = Ref{Ptr{Cvoid}}(C_NULL)
    ccall((:tl_thing_create, lib), UInt32, (Csize_t, Float64, Ref{Ptr{Cvoid}}), n, 1.0, out)
end
destroy(p) = ccall((:tl_thing_destroy, lib), Cvoid, (Ptr{Cvoid},), p)
use(p, m, out) = ccall((:tl_thing_use, lib), UInt32, (Ptr{Cvoid}, Ref{TLMatrix}, Ptr{UInt64}), p, m, out)
"#;

fn problems_of(julia: &str) -> Vec<String> {
    check(MINI_HEADER, &[("snippet.jl", julia)])
}

#[track_caller]
fn assert_reported(julia: &str, fragment: &str) {
    let problems = problems_of(julia);
    assert!(
        problems.iter().any(|p| p.contains(fragment)),
        "expected a problem containing '{fragment}', got: {problems:#?}"
    );
}

#[test]
fn check_accepts_a_correct_snippet() {
    assert_eq!(problems_of(GOOD), Vec::<String>::new());
    let header = parse_header(MINI_HEADER);
    assert_eq!(header.functions.len(), 4, "{header:#?}");
    assert_eq!(header.functions["tl_thing_create"].1.len(), 3);
}

#[test]
fn check_reports_an_unknown_function() {
    assert_reported(
        &format!("{GOOD}\nx() = ccall((:tl_thing_frobnicate, lib), UInt32, ())"),
        "tl_thing_frobnicate: no such function",
    );
}

#[test]
fn check_reports_a_wrong_argument_count() {
    let wrong =
        GOOD.replace("(Csize_t, Float64, Ref{Ptr{Cvoid}}), n, 1.0, out)", "(Csize_t, Ref{Ptr{Cvoid}}), n, out)");
    assert_reported(&wrong, "tl_thing_create: 2 argument types in the ccall, 3 parameters");
}

#[test]
fn check_reports_wrong_argument_types() {
    // Int64 for size_t: right size here, wrong type; Float32 for double; Int32 for an enum.
    assert_reported(&GOOD.replace("(Csize_t, Float64,", "(Int64, Float64,"), "argument 1: usize in C, Int64");
    assert_reported(&GOOD.replace("(Csize_t, Float64,", "(Csize_t, Float32,"), "argument 2: f64 in C, Float32");
    assert_reported(&GOOD.replace("(UInt32,), s)", "(Int32,), s)"), "tl_name: argument 1: u32 in C, Int32");
    assert_reported(&GOOD.replace("Ptr{UInt64}), p, m, out)", "Ptr{Float64}), p, m, out)"), "argument 3: u64* in C");
    assert_reported(&GOOD.replace("Ref{TLMatrix}", "Ref{UInt64}"), "argument 2: struct tl_matrix* in C");
    assert_reported(&GOOD.replace("(Csize_t, Float64,", "(UInt, Float64,"), "'UInt' has no C counterpart");
    assert_reported(
        &GOOD.replace(
            "Ref{Ptr{Cvoid}}(C_NULL)\n    ccall((:tl_thing_create, lib), UInt32, (Csize_t, Float64, Ref{Ptr{Cvoid}})",
            "Ref{Ptr{Cvoid}}(C_NULL)\n    ccall((:tl_thing_create, lib), UInt32, (Csize_t, Float64, Ptr{Cvoid})",
        ),
        "argument 3: opaque tl_thing** in C",
    );
}

#[test]
fn check_reports_a_wrong_return_type() {
    assert_reported(&GOOD.replace("Cvoid, (Ptr{Cvoid},), p)", "UInt32, (Ptr{Cvoid},), p)"), "returns void in C");
    assert_reported(
        &GOOD.replace("ccall((:tl_thing_use, lib), UInt32", "ccall((:tl_thing_use, lib), Int32"),
        "returns u32 in C",
    );
    assert_reported(&GOOD.replace("Cstring, (UInt32,)", "Ptr{Float64}, (UInt32,)"), "returns char* in C");
}

#[test]
fn check_reports_a_function_without_wrapper_and_a_values_mismatch() {
    let missing = GOOD.replace("destroy(p) = ccall((:tl_thing_destroy, lib), Cvoid, (Ptr{Cvoid},), p)", "");
    assert_reported(&missing, "tl_thing_destroy is in the header but no Julia ccall wraps it");
    assert_reported(&GOOD.replace("(Ptr{Cvoid},), p)", "(Ptr{Cvoid},))"), "1 argument types but 0 values");
}

#[test]
fn check_reports_struct_drift() {
    assert_reported(&GOOD.replace("device::Int32", "device::Int64"), "TLMatrix.device::Int64 does not match");
    assert_reported(&GOOD.replace("    rows::UInt64\n", ""), "TLMatrix has 2 fields, tl_matrix 3");
    assert_reported(
        &GOOD.replace("rows::UInt64", "cols::UInt64"),
        "TLMatrix.cols::UInt64 does not match tl_matrix.rows",
    );
}

#[test]
fn check_ignores_ccalls_in_comments_only() {
    // A real ccall hidden behind a comment does not count as a wrapper.
    let commented = GOOD.replace("destroy(p) = ccall", "# destroy(p) = ccall");
    assert_reported(&commented, "tl_thing_destroy is in the header but no Julia ccall wraps it");
}

// ---- callbacks and versioned option structs -------------------------------------------------

/// A header in the style of the evaluator functions: a function-pointer typedef, an inline
/// function pointer, and an options struct with a leading size field passed by value.
const CALLBACK_HEADER: &str = r#"
typedef enum tl_status { TL_STATUS_OK = 0 } tl_status;
typedef struct tl_thing tl_thing;
typedef enum tl_status (*tl_eval_fn)(void *user_data,
                                     const struct tl_thing *thing,
                                     double *out);
typedef struct tl_eval_options {
  size_t size;
  uint32_t repeats;
  tl_eval_fn progress;
} tl_eval_options;
enum tl_status tl_evaluate(const struct tl_thing *thing,
                           tl_eval_fn eval,
                           void *user_data,
                           tl_eval_options options,
                           double *out);
enum tl_status tl_visit(struct tl_thing *thing, void (*visit)(void *user_data, size_t i), void *user_data);
"#;

const CALLBACK_GOOD: &str = r#"
Base.@kwdef struct TLEvalOptions
    size::Csize_t = sizeof(TLEvalOptions)
    repeats::UInt32 = 1
    progress::Ptr{Cvoid} = C_NULL
end
function evaluate(thing, f, out)
    cb = @cfunction(eval_trampoline, UInt32, (Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Float64}))
    ccall((:tl_evaluate, lib), UInt32, (Ptr{Cvoid}, Ptr{Cvoid}, Any, TLEvalOptions, Ref{Float64}),
          thing, cb, f, TLEvalOptions(), out)
end
visit(thing, cb, data) = ccall((:tl_visit, lib), UInt32, (Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid}), thing, cb, data)
"#;

fn callback_problems(julia: &str, mirrors: &[(&str, &str)]) -> Vec<String> {
    check_with(CALLBACK_HEADER, &[("callbacks.jl", julia)], mirrors)
}

const CALLBACK_MIRRORS: &[(&str, &str)] = &[("TLEvalOptions", "tl_eval_options")];

#[test]
fn callbacks_are_pointers_and_option_structs_are_mirrored() {
    let header = parse_header(CALLBACK_HEADER);
    assert_eq!(header.functions.len(), 2, "{header:#?}");
    assert_eq!(header.functions["tl_evaluate"].1[1], Ty::Ptr(Box::new(Ty::Void)));
    assert_eq!(header.functions["tl_visit"].1.len(), 3);
    assert_eq!(header.structs["tl_eval_options"][2].1, Ty::Ptr(Box::new(Ty::Void)));
    // User data may be `Any` (a Julia object) or Ptr{Cvoid}; `Any` stands for void* only.
    let good = CALLBACK_GOOD.to_string();
    assert_eq!(callback_problems(&good, CALLBACK_MIRRORS), Vec::<String>::new());
    let as_ptr = good.replace("Ptr{Cvoid}, Any, TLEvalOptions", "Ptr{Cvoid}, Ptr{Cvoid}, TLEvalOptions");
    assert_eq!(callback_problems(&as_ptr, CALLBACK_MIRRORS), Vec::<String>::new());
    let problems = |julia: &str, mirrors: &[(&str, &str)]| callback_problems(julia, mirrors).join("\n");
    assert!(problems(&good.replace("TLEvalOptions, Ref{Float64}", "TLEvalOptions, Any"), CALLBACK_MIRRORS)
        .contains("argument 5: f64* in C, Any (a Julia object) in Julia"));
    // A size field left unset, a missing mirror, an undefined mirror, a callback field typed as an
    // integer, a by-value struct passed by reference.
    assert!(problems(&good.replace("= sizeof(TLEvalOptions)", "= 0"), CALLBACK_MIRRORS)
        .contains("must be built with size = sizeof(TLEvalOptions)"));
    assert!(problems(&good, &[]).contains("struct tl_eval_options is used by the header but has no Julia mirror"));
    assert!(problems(&good.replace("struct TLEvalOptions", "struct Options"), CALLBACK_MIRRORS)
        .contains("TLEvalOptions (the mirror of tl_eval_options) is not defined"));
    assert!(problems(&good.replace("progress::Ptr{Cvoid}", "progress::UInt64"), CALLBACK_MIRRORS)
        .contains("TLEvalOptions.progress::UInt64 does not match"));
    assert!(problems(&good.replace("progress::Ptr{Cvoid}", "progress::Any"), CALLBACK_MIRRORS)
        .contains("TLEvalOptions.progress::Any does not match"));
    assert!(problems(
        &good.replace("TLEvalOptions, Ref{Float64}", "Ref{TLEvalOptions}, Ref{Float64}"),
        CALLBACK_MIRRORS
    )
    .contains("argument 4: struct tl_eval_options in C"));
}

#[test]
fn keyword_field_names_are_spelled_with_var() {
    // A C field named after a Julia keyword (tl_barrier_result.end) is `var"end"` in the mirror.
    let header = MINI_HEADER.replace("uint64_t rows;", "uint64_t end;");
    let julia = GOOD.replace("rows::UInt64", "var\"end\"::UInt64");
    assert_eq!(check(&header, &[("good.jl", &julia)]), Vec::<String>::new());
    let wrong = GOOD.replace("rows::UInt64", "var\"stop\"::UInt64");
    assert!(check(&header, &[("good.jl", &wrong)]).join("\n").contains("TLMatrix.stop::UInt64 does not match"));
}
