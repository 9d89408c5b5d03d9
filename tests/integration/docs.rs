//! The security documentation reproduces the route table and the role→permission table; these
//! checks keep it from drifting from the code an operator actually runs.

use kasho::domain::authz::{Permission, ROLE_PERMISSIONS, Role, Scope};
use kasho::http::routes::{Access, table};

fn security_md() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/SECURITY.md"))
        .expect("docs/SECURITY.md")
}

fn cells(line: &str) -> Vec<String> {
    line.trim()
        .trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_owned())
        .collect()
}

#[test]
fn every_route_is_in_the_security_docs_with_its_access_and_action() {
    let doc = security_md();
    let rows: Vec<Vec<String>> = doc
        .lines()
        .filter(|l| {
            l.starts_with("| GET ")
                || l.starts_with("| POST ")
                || l.starts_with("| PUT ")
                || l.starts_with("| PATCH ")
                || l.starts_with("| DELETE ")
        })
        .map(cells)
        .collect();
    let routes = table();
    for r in &routes {
        let path = format!("`{}`", r.path);
        let row = rows
            .iter()
            .find(|c| c[0] == r.method.as_str() && c[1] == path)
            .unwrap_or_else(|| panic!("docs/SECURITY.md has no row for {} {}", r.method, r.path));
        let access = match r.access {
            Access::Public => "public".to_owned(),
            Access::Authenticated => "authenticated".to_owned(),
            Access::Permission(p) => format!("`{}`", p.as_str()),
            Access::MetricsToken => "metrics token".to_owned(),
        };
        assert!(
            row[2].starts_with(&access),
            "{} {}: docs say access {:?}, the table says {access}",
            r.method,
            r.path,
            row[2]
        );
        assert!(
            row[3].starts_with(&format!("`{}`", r.action)),
            "{} {}: docs say action {:?}, the table says {}",
            r.method,
            r.path,
            row[3],
            r.action
        );
    }
    assert_eq!(
        rows.len(),
        routes.len(),
        "docs list routes the table does not have"
    );
}

#[test]
fn the_role_table_in_the_security_docs_is_the_code() {
    let doc = security_md();
    let header = doc
        .lines()
        .find(|l| l.starts_with("| permission | `MANAGER`"))
        .expect("role table header");
    let roles: Vec<Role> = cells(header)[1..]
        .iter()
        .map(|c| Role::parse(c.trim_matches('`')).expect("role column"))
        .collect();
    for perm in Permission::ALL {
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", perm.as_str())))
            .unwrap_or_else(|| panic!("docs/SECURITY.md has no row for {perm}"));
        let row = cells(row);
        for (i, role) in roles.iter().enumerate() {
            let granted = ROLE_PERMISSIONS
                .iter()
                .find(|(r, _)| r == role)
                .and_then(|(_, g)| g.iter().find(|(p, _)| *p == perm))
                .map(|(_, s)| s);
            let expected = match granted {
                Some(Scope::All) => "all",
                Some(Scope::Own) => "own",
                None => "–",
            };
            assert_eq!(row[i + 1], expected, "{perm} for {role}");
        }
    }
}
