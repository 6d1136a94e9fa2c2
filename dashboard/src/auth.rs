//! Sign-in and sign-up forms.

use maud::{html, Markup};

use crate::layout::{csrf_field, error_box, page};

/// What a sign-in form shows again after a failed attempt.
#[derive(Debug, Default)]
pub struct SignInForm<'a> {
    pub email: &'a str,
    pub error: Option<&'a str>,
    /// The pre-session CSRF token (double-submit cookie).
    pub csrf: &'a str,
}

pub fn sign_in(form: &SignInForm) -> Markup {
    page(
        "Sign in",
        None,
        html! {
            section.card.narrow {
                h1 { "Sign in" }
                (error_box(form.error))
                form method="post" action="/app/sign-in" {
                    (csrf_field(form.csrf))
                    label for="email" { "Email" }
                    input #email type="email" name="email" autocomplete="email" required value=(form.email);
                    label for="password" { "Password" }
                    input #password type="password" name="password" autocomplete="current-password" required;
                    button type="submit" { "Sign in" }
                }
                p { "New here? " a href="/app/sign-up" { "Create an account" } "." }
            }
        },
    )
}

/// What a sign-up form shows again after a failed attempt.
#[derive(Debug, Default)]
pub struct SignUpForm<'a> {
    pub name: &'a str,
    pub email: &'a str,
    /// `owner` or `volunteer`.
    pub role: &'a str,
    pub error: Option<&'a str>,
    pub csrf: &'a str,
}

pub fn sign_up(form: &SignUpForm) -> Markup {
    let volunteer = form.role == "volunteer";
    page(
        "Sign up",
        None,
        html! {
            section.card.narrow {
                h1 { "Create an account" }
                (error_box(form.error))
                form method="post" action="/app/sign-up" {
                    (csrf_field(form.csrf))
                    fieldset {
                        legend { "I want to" }
                        label.choice {
                            input type="radio" name="role" value="owner" checked[!volunteer];
                            " measure my websites (site owner)"
                        }
                        label.choice {
                            input type="radio" name="role" value="volunteer" checked[volunteer];
                            " run probes and earn (volunteer)"
                        }
                    }
                    label for="name" { "Name or company" }
                    input #name type="text" name="name" autocomplete="organization" required maxlength="100" value=(form.name);
                    label for="email" { "Email" }
                    input #email type="email" name="email" autocomplete="email" required value=(form.email);
                    label for="password" { "Password " small { "(at least 10 characters)" } }
                    input #password type="password" name="password" autocomplete="new-password" required minlength="10";
                    button type="submit" { "Create account" }
                }
                p { "Already have an account? " a href="/app/sign-in" { "Sign in" } "." }
            }
        },
    )
}
