//! The access decision, exhaustively: every role against every action (the
//! matrix is written out here independently of the code), every scope shape
//! against fleet-bound, all-fleet and global-catalog requests, the scope
//! rule for new tokens, token expiry and revocation, and the token format.

use std::collections::BTreeSet;

use lockstep::domain::{
    Action, ApiToken, Denied, FleetId, Principal, Role, Scope, ScopeError, Timestamp, TokenId,
    TokenRefused, TokenState, allows, check_scope, role_allows, split_token,
};

fn fleet(s: &str) -> FleetId {
    FleetId::new(s).unwrap()
}

fn principal(role: Role, fleets: &[&str]) -> Principal {
    Principal {
        token: TokenId::new("t1").unwrap(),
        name: "someone".into(),
        role,
        scope: Scope::fleets(fleets.iter().map(|f| fleet(f))),
    }
}

/// The permission matrix as documented: (action, admin, operator, customer, viewer).
const MATRIX: [(&str, [bool; 4]); 21] = [
    ("read_catalog", [true, true, true, true]),
    ("write_catalog", [true, true, false, false]),
    ("create_fleet", [true, false, false, false]),
    ("read_fleets", [true, true, true, true]),
    ("read_releases", [true, true, true, true]),
    ("write_releases", [true, true, false, false]),
    ("read_devices", [true, true, true, true]),
    ("register_devices", [true, true, false, false]),
    ("read_env", [true, true, false, true]),
    ("write_env", [true, true, false, false]),
    ("read_operations", [true, true, true, true]),
    ("write_operations", [true, true, false, false]),
    ("force", [true, true, false, false]),
    ("read_rollouts", [true, true, true, true]),
    ("write_rollouts", [true, true, false, false]),
    ("read_windows", [true, true, true, true]),
    ("write_windows", [true, true, false, false]),
    ("read_approvals", [true, true, true, true]),
    ("decide_approvals", [true, false, true, false]),
    ("read_audit", [true, true, false, true]),
    ("manage_tokens", [true, false, false, false]),
];

#[test]
fn every_role_may_take_exactly_the_actions_of_the_documented_matrix() {
    let names: BTreeSet<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
    let rows: BTreeSet<&str> = MATRIX.iter().map(|(a, _)| *a).collect();
    assert_eq!(names, rows, "the matrix covers every action once");
    for (name, allowed) in MATRIX {
        let action = Action::ALL
            .into_iter()
            .find(|a| a.as_str() == name)
            .unwrap();
        for (role, want) in Role::ALL.into_iter().zip(allowed) {
            assert_eq!(role_allows(role, action), want, "{role} {name}");
            // Within scope, the full decision agrees with the role table.
            let p = principal(
                role,
                if role == Role::Admin {
                    &[]
                } else {
                    &["site-x"]
                },
            );
            let fleet_x = fleet("site-x");
            assert_eq!(
                allows(&p, action, Some(&fleet_x)).is_ok(),
                want,
                "{role} {name} on its own fleet"
            );
        }
    }
}

#[test]
fn a_fleet_scoped_token_is_refused_every_fleet_bound_action_on_another_fleet() {
    let y = fleet("site-y");
    for role in [Role::Operator, Role::Customer, Role::Viewer] {
        let p = principal(role, &["site-x"]);
        for action in Action::ALL {
            if !role_allows(role, action) {
                continue;
            }
            let got = allows(&p, action, Some(&y));
            if action.is_global() {
                assert_eq!(got, Ok(()), "{role} {action:?}: the catalog has no fleet");
            } else {
                assert_eq!(
                    got,
                    Err(Denied::Fleet {
                        fleet: y.clone(),
                        action,
                        fleets: [fleet("site-x")].into(),
                    }),
                    "{role} {action:?}"
                );
            }
        }
    }
}

#[test]
fn requests_across_every_fleet_need_a_token_scoped_to_all_fleets() {
    let scoped = principal(Role::Viewer, &["site-x", "site-z"]);
    let unscoped = principal(Role::Viewer, &[]);
    for action in [
        Action::ReadDevices,
        Action::ReadAudit,
        Action::ReadFleets,
        Action::ReadWindows,
    ] {
        assert_eq!(allows(&unscoped, action, None), Ok(()), "{action:?}");
        assert_eq!(
            allows(&scoped, action, None),
            Err(Denied::AllFleets {
                action,
                fleets: [fleet("site-x"), fleet("site-z")].into(),
            }),
            "{action:?}"
        );
    }
    // The catalog belongs to no fleet: scoped tokens read it (and operators add to it).
    assert_eq!(allows(&scoped, Action::ReadCatalog, None), Ok(()));
    assert_eq!(
        allows(
            &principal(Role::Operator, &["site-x"]),
            Action::WriteCatalog,
            None
        ),
        Ok(())
    );
    // An admin covers every fleet, including requests that span them.
    let admin = principal(Role::Admin, &[]);
    for action in Action::ALL {
        assert_eq!(allows(&admin, action, None), Ok(()), "{action:?}");
        assert_eq!(
            allows(&admin, action, Some(&fleet("anywhere"))),
            Ok(()),
            "{action:?}"
        );
    }
}

#[test]
fn a_role_refusal_wins_over_a_scope_refusal_and_both_name_what_is_missing() {
    let viewer = principal(Role::Viewer, &["site-x"]);
    let err = allows(&viewer, Action::WriteOperations, Some(&fleet("site-y"))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "a viewer token may not create or cancel operations"
    );
    let op = principal(Role::Operator, &["site-x"]);
    assert_eq!(
        allows(&op, Action::DecideApprovals, Some(&fleet("site-x")))
            .unwrap_err()
            .to_string(),
        "an operator token may not approve or decline"
    );
    let customer = principal(Role::Customer, &["site-x", "site-z"]);
    assert_eq!(
        allows(&customer, Action::DecideApprovals, Some(&fleet("site-y")))
            .unwrap_err()
            .to_string(),
        "this token is not scoped to fleet site-y (it may approve or decline only on fleets site-x, site-z)"
    );
    assert_eq!(
        allows(&customer, Action::ReadDevices, None)
            .unwrap_err()
            .to_string(),
        "to read devices across every fleet, a token scoped to all fleets is needed (this one covers site-x, site-z)"
    );
}

#[test]
fn admin_tokens_cover_every_fleet_and_operators_and_customers_name_fleets() {
    let some = Scope::fleets([fleet("site-x")]);
    let all = Scope::fleets([]);
    assert_eq!(all, Scope::AllFleets, "no fleets named means every fleet");
    let cases = [
        (Role::Admin, &all, Ok(())),
        (Role::Admin, &some, Err(ScopeError::AdminNamesFleets)),
        (
            Role::Operator,
            &all,
            Err(ScopeError::FleetsRequired {
                role: Role::Operator,
            }),
        ),
        (Role::Operator, &some, Ok(())),
        (
            Role::Customer,
            &all,
            Err(ScopeError::FleetsRequired {
                role: Role::Customer,
            }),
        ),
        (Role::Customer, &some, Ok(())),
        (Role::Viewer, &all, Ok(())),
        (Role::Viewer, &some, Ok(())),
    ];
    for (role, scope, want) in cases {
        assert_eq!(check_scope(role, scope), want, "{role} {scope:?}");
    }
    assert_eq!(
        ScopeError::FleetsRequired {
            role: Role::Operator
        }
        .to_string(),
        "an operator token must name at least one fleet"
    );
}

fn token(expires: Option<i64>, revoked: Option<i64>) -> ApiToken {
    ApiToken {
        id: TokenId::new("abc123").unwrap(),
        name: "ci".into(),
        role: Role::Operator,
        scope: Scope::fleets([fleet("site-x")]),
        created_by: "admin (token a1)".into(),
        created: Timestamp(1_000),
        expires: expires.map(Timestamp),
        revoked: revoked.map(Timestamp),
        revoked_by: revoked.map(|_| "admin (token a1)".into()),
    }
}

#[test]
fn a_token_is_usable_until_it_expires_or_is_revoked() {
    let id = TokenId::new("abc123").unwrap();
    let cases = [
        (token(None, None), 5_000, TokenState::Active),
        (token(Some(5_000), None), 4_999, TokenState::Active),
        (token(Some(5_000), None), 5_000, TokenState::Expired),
        (token(None, Some(2_000)), 3_000, TokenState::Revoked),
        // Revoked wins, whatever the expiry says.
        (token(Some(1_500), Some(2_000)), 3_000, TokenState::Revoked),
    ];
    for (t, now, want) in cases {
        assert_eq!(t.state_at(Timestamp(now)), want, "{t:?} at {now}");
        let got = t.principal_at(Timestamp(now));
        match want {
            TokenState::Active => {
                let p = got.unwrap();
                assert_eq!(
                    (p.token, p.role, p.scope),
                    (id.clone(), Role::Operator, t.scope.clone())
                );
            }
            TokenState::Expired => {
                assert_eq!(got, Err(TokenRefused::Expired { id: id.clone() }))
            }
            TokenState::Revoked => {
                assert_eq!(got, Err(TokenRefused::Revoked { id: id.clone() }))
            }
        }
    }
}

#[test]
fn tokens_split_into_id_and_secret_only_in_the_lst_shape() {
    let (id, secret) = split_token("lst_0a1b2c_deadbeef").unwrap();
    assert_eq!((id.as_str(), secret), ("0a1b2c", "deadbeef"));
    for bad in [
        "",
        "lst_",
        "lst_abc",
        "lst_abc_",
        "lst__secret",
        "lsd_0a1b2c_deadbeef",
        "Bearer lst_0a1b2c_deadbeef",
        "lst_ABC_secret",
    ] {
        assert_eq!(split_token(bad), None, "{bad:?}");
    }
}

#[test]
fn the_actor_names_the_token_and_what_the_client_said() {
    let p = principal(Role::Customer, &["site-x"]);
    assert_eq!(p.actor(), "someone (token t1)");
    assert_eq!(p.actor_noting(""), "someone (token t1)");
    assert_eq!(p.actor_noting("someone"), "someone (token t1)");
    assert_eq!(
        p.actor_noting("customer@site"),
        "customer@site via someone (token t1)"
    );
    assert!(p.sees(&fleet("site-x")) && !p.sees(&fleet("site-y")));
}
