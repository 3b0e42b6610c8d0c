//! The login pages' HTML, in Spanish and English: server-rendered, no
//! script, every input labelled, errors announced (`role="alert"`) and tied
//! to their fields (`aria-invalid`, `aria-describedby`).

pub use atiende_platform::html::escape;
use secrecy::ExposeSecret;

use crate::service::oidc::{
    Attribute, FieldProblem, Locale, Notice, Page, PageError, RegistrationField, Screen,
};

pub const AUTHORIZE_PATH: &str = "/oauth2/authorize";
pub const REGISTER_PATH: &str = "/oauth2/register";
pub const VERIFY_EMAIL_PATH: &str = "/oauth2/verify-email";
pub const ENROL_PATH: &str = "/oauth2/enrol";
pub const CONTINUE_PATH: &str = "/oauth2/continue";
pub const CONSENT_PATH: &str = "/oauth2/consent";
pub const LOGOUT_PATH: &str = "/oauth2/logout";

/// Every string of the pages, in one language.
pub struct Texts {
    pub sign_in_title: &'static str,
    pub sign_in_intro: &'static str,
    pub run: &'static str,
    pub password: &'static str,
    pub second_factor: &'static str,
    pub sign_in_button: &'static str,
    pub no_account: &'static str,
    pub register_link: &'static str,
    pub register_title: &'static str,
    pub register_intro: &'static str,
    pub given_names: &'static str,
    pub family_names: &'static str,
    pub email: &'static str,
    pub phone: &'static str,
    pub optional: &'static str,
    pub new_password: &'static str,
    pub password_hint: &'static str,
    pub register_button: &'static str,
    pub problems_title: &'static str,
    pub verify_title: &'static str,
    pub email_code: &'static str,
    pub verify_button: &'static str,
    pub enrol_title: &'static str,
    pub enrol_intro: &'static str,
    pub enrol_manual: &'static str,
    pub qr_label: &'static str,
    pub totp_code: &'static str,
    pub enrol_button: &'static str,
    pub recovery_title: &'static str,
    pub recovery_intro: &'static str,
    pub continue_button: &'static str,
    pub consent_title: &'static str,
    pub consent_intro: &'static str,
    pub allow: &'static str,
    pub deny: &'static str,
    pub error_title: &'static str,
    pub logout_title: &'static str,
    pub logout_confirm: &'static str,
    pub logout_button: &'static str,
    pub logged_out: &'static str,
}

const ES: Texts = Texts {
    sign_in_title: "Ingresar con Atiende",
    sign_in_intro: "Para continuar en <strong>{client}</strong>, ingrese con su RUN.",
    run: "RUN",
    password: "Contraseña",
    second_factor: "Código de verificación (de su aplicación de autenticación, o un código de recuperación)",
    sign_in_button: "Ingresar",
    no_account: "¿No tiene cuenta?",
    register_link: "Crear una cuenta",
    register_title: "Crear una cuenta",
    register_intro: "Cree su cuenta para continuar en <strong>{client}</strong>.",
    given_names: "Nombres",
    family_names: "Apellidos",
    email: "Correo electrónico",
    phone: "Teléfono móvil",
    optional: "(opcional)",
    new_password: "Contraseña",
    password_hint: "Al menos 8 caracteres. Puede usar una frase.",
    register_button: "Crear cuenta",
    problems_title: "Revise estos datos",
    verify_title: "Confirme su correo electrónico",
    email_code: "Código de 6 dígitos",
    verify_button: "Confirmar",
    enrol_title: "Agregue un segundo factor",
    enrol_intro: "<strong>{client}</strong> pide un nivel de seguridad mayor. Escanee el código con su aplicación de autenticación e ingrese el código que muestra.",
    enrol_manual: "Si no puede escanearlo, ingrese esta clave en la aplicación:",
    qr_label: "Código QR para su aplicación de autenticación",
    totp_code: "Código de la aplicación",
    enrol_button: "Activar",
    recovery_title: "Guarde sus códigos de recuperación",
    recovery_intro: "Cada código sirve una vez si pierde su teléfono. No se volverán a mostrar.",
    continue_button: "Continuar",
    consent_title: "Autorizar el acceso",
    consent_intro: "<strong>{client}</strong> solicita acceso a:",
    allow: "Autorizar",
    deny: "Cancelar",
    error_title: "No se puede continuar",
    logout_title: "Cerrar sesión",
    logout_confirm: "¿Desea cerrar su sesión de Atiende?",
    logout_button: "Cerrar sesión",
    logged_out: "Su sesión de Atiende está cerrada.",
};

const EN: Texts = Texts {
    sign_in_title: "Sign in with Atiende",
    sign_in_intro: "To continue to <strong>{client}</strong>, sign in with your RUN.",
    run: "RUN",
    password: "Password",
    second_factor: "Verification code (from your authenticator app, or a recovery code)",
    sign_in_button: "Sign in",
    no_account: "No account yet?",
    register_link: "Create an account",
    register_title: "Create an account",
    register_intro: "Create your account to continue to <strong>{client}</strong>.",
    given_names: "Given names",
    family_names: "Family names",
    email: "Email address",
    phone: "Mobile phone",
    optional: "(optional)",
    new_password: "Password",
    password_hint: "At least 8 characters. A passphrase is fine.",
    register_button: "Create account",
    problems_title: "Please check these",
    verify_title: "Confirm your email address",
    email_code: "6-digit code",
    verify_button: "Confirm",
    enrol_title: "Add a second factor",
    enrol_intro: "<strong>{client}</strong> asks for a higher level of security. Scan the code with your authenticator app and type the code it shows.",
    enrol_manual: "If you cannot scan it, type this key into the app:",
    qr_label: "QR code for your authenticator app",
    totp_code: "Code from the app",
    enrol_button: "Turn on",
    recovery_title: "Keep your recovery codes",
    recovery_intro: "Each code works once if you lose your phone. They will not be shown again.",
    continue_button: "Continue",
    consent_title: "Allow access",
    consent_intro: "<strong>{client}</strong> asks for:",
    allow: "Allow",
    deny: "Cancel",
    error_title: "Cannot continue",
    logout_title: "Sign out",
    logout_confirm: "Do you want to sign out of Atiende?",
    logout_button: "Sign out",
    logged_out: "You are signed out of Atiende.",
};

pub fn texts(locale: Locale) -> &'static Texts {
    match locale {
        Locale::Es => &ES,
        Locale::En => &EN,
    }
}

fn notice_text(locale: Locale, notice: Notice) -> &'static str {
    match (locale, notice) {
        (Locale::Es, Notice::WrongCredentials) => "El RUN o la contraseña no son correctos.",
        (Locale::En, Notice::WrongCredentials) => "The RUN or the password is not right.",
        (Locale::Es, Notice::SecondFactorNeeded) => {
            "Ingrese el código de su aplicación de autenticación o un código de recuperación."
        }
        (Locale::En, Notice::SecondFactorNeeded) => {
            "Type the code from your authenticator app, or a recovery code."
        }
        (Locale::Es, Notice::StepUp) => {
            "Esta institución pide un nivel de seguridad mayor: ingrese también el código de su aplicación de autenticación."
        }
        (Locale::En, Notice::StepUp) => {
            "This agency asks for a higher level of security: type the code from your authenticator app as well."
        }
        (Locale::Es, Notice::LockedOut) => {
            "Demasiados intentos fallidos. Espere unos minutos e intente de nuevo."
        }
        (Locale::En, Notice::LockedOut) => {
            "Too many failed attempts. Wait a few minutes and try again."
        }
        (Locale::Es, Notice::WrongCode) => "El código no es correcto o expiró.",
        (Locale::En, Notice::WrongCode) => "The code is not right, or it has expired.",
        (Locale::Es, Notice::EmailCodeSent) => {
            "Si el RUN no tenía cuenta, le enviamos un código de 6 dígitos a su correo electrónico."
        }
        (Locale::En, Notice::EmailCodeSent) => {
            "If the RUN had no account, we sent a 6-digit code to your email address."
        }
    }
}

pub fn page_error_text(locale: Locale, error: PageError) -> &'static str {
    match (locale, error) {
        (Locale::Es, PageError::UnknownClient) => "La aplicación que lo envió no es conocida.",
        (Locale::En, PageError::UnknownClient) => "The application that sent you is not known.",
        (Locale::Es, PageError::UnregisteredRedirect) => {
            "La dirección de retorno no está registrada para esta aplicación."
        }
        (Locale::En, PageError::UnregisteredRedirect) => {
            "The return address is not registered for this application."
        }
        (Locale::Es, PageError::Expired) => {
            "La solicitud expiró. Vuelva a la aplicación e intente de nuevo."
        }
        (Locale::En, PageError::Expired) => {
            "The request has expired. Go back to the application and try again."
        }
        (Locale::Es, PageError::Unavailable) => {
            "El servicio no está disponible. Intente más tarde."
        }
        (Locale::En, PageError::Unavailable) => "The service is not available. Try again later.",
        (Locale::Es, PageError::InvalidReturn) => "La dirección de retorno no es válida.",
        (Locale::En, PageError::InvalidReturn) => "The return address is not valid.",
    }
}

fn attribute_text(locale: Locale, attribute: Attribute) -> &'static str {
    match (locale, attribute) {
        (Locale::Es, Attribute::Subject) => "Un identificador suyo propio de esta institución",
        (Locale::En, Attribute::Subject) => "An identifier of you that only this agency gets",
        (Locale::Es, Attribute::Profile) => "Su nombre y su RUN",
        (Locale::En, Attribute::Profile) => "Your name and your RUN",
        (Locale::Es, Attribute::Email) => "Su correo electrónico",
        (Locale::En, Attribute::Email) => "Your email address",
        (Locale::Es, Attribute::Phone) => "Su número de teléfono",
        (Locale::En, Attribute::Phone) => "Your phone number",
        (Locale::Es, Attribute::OfflineAccess) => {
            "Seguir accediendo a estos datos por 12 horas, sin que usted esté conectado"
        }
        (Locale::En, Attribute::OfflineAccess) => {
            "Keep access to these for 12 hours, while you are not signed in"
        }
    }
}

fn problem_text(locale: Locale, field: RegistrationField, problem: FieldProblem) -> &'static str {
    use FieldProblem as P;
    use RegistrationField as F;
    match (locale, field, problem) {
        (Locale::Es, _, P::PasswordTooShort) => "La contraseña debe tener al menos 8 caracteres.",
        (Locale::En, _, P::PasswordTooShort) => "The password must have at least 8 characters.",
        (Locale::Es, _, P::PasswordTooLong) => "La contraseña debe tener a lo más 128 caracteres.",
        (Locale::En, _, P::PasswordTooLong) => "The password must have at most 128 characters.",
        (Locale::Es, _, P::PasswordCommon) => {
            "Esa contraseña es demasiado común. Elija otra, por ejemplo una frase."
        }
        (Locale::En, _, P::PasswordCommon) => {
            "That password is too common. Choose another, such as a phrase."
        }
        (Locale::Es, F::NationalId, P::Invalid) => {
            "Ingrese un RUN válido, por ejemplo 12.345.678-5."
        }
        (Locale::En, F::NationalId, P::Invalid) => "Enter a valid RUN, such as 12.345.678-5.",
        (Locale::Es, F::GivenNames | F::FamilyNames, P::Invalid) => {
            "Ingrese entre 1 y 100 caracteres."
        }
        (Locale::En, F::GivenNames | F::FamilyNames, P::Invalid) => {
            "Enter between 1 and 100 characters."
        }
        (Locale::Es, F::Email, P::Invalid) => {
            "Ingrese un correo electrónico como nombre@ejemplo.cl."
        }
        (Locale::En, F::Email, P::Invalid) => "Enter an email address such as nombre@ejemplo.cl.",
        (Locale::Es, F::Phone, P::Invalid) => "Ingrese un número como +56 9 1234 5678.",
        (Locale::En, F::Phone, P::Invalid) => "Enter a number such as +56 9 1234 5678.",
        (Locale::Es, F::Password, P::Invalid) => "Ingrese una contraseña.",
        (Locale::En, F::Password, P::Invalid) => "Enter a password.",
    }
}

fn field_name(field: RegistrationField) -> &'static str {
    match field {
        RegistrationField::NationalId => "national_id",
        RegistrationField::GivenNames => "given_names",
        RegistrationField::FamilyNames => "family_names",
        RegistrationField::Email => "email",
        RegistrationField::Phone => "phone",
        RegistrationField::Password => "password",
    }
}

/// A whole HTML document.
pub fn document(locale: Locale, title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"{lang}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Atiende</title><style>\
         body{{font-family:system-ui,sans-serif;max-width:36rem;margin:2rem auto;padding:0 1rem;line-height:1.5}}\
         label{{display:block;font-weight:600}}input{{font-size:1rem;padding:.4rem;width:100%;box-sizing:border-box}}\
         [aria-invalid=true]{{border:2px solid #b00020}}.error,[role=alert]{{color:#b00020}}\
         button{{font-size:1rem;padding:.5rem 1rem;margin-right:.5rem}}code{{font-size:1.1rem}}\
         svg{{width:14rem;height:14rem}}</style></head>\
         <body><main><h1>{title}</h1>{body}</main></body></html>",
        lang = locale.as_str(),
        title = escape(title),
    )
}

fn hidden_fields(page: &Page) -> String {
    format!(
        "<input type=\"hidden\" name=\"request_id\" value=\"{}\">\
         <input type=\"hidden\" name=\"csrf_token\" value=\"{}\">\
         <input type=\"hidden\" name=\"locale\" value=\"{}\">",
        escape(&page.request_id),
        escape(&page.csrf_token),
        page.locale.as_str()
    )
}

fn alert(page: &Page) -> String {
    page.notice
        .map(|n| {
            format!(
                "<p role=\"alert\">{}</p>",
                escape(notice_text(page.locale, n))
            )
        })
        .unwrap_or_default()
}

fn with_client(template: &str, client: &str) -> String {
    template.replace("{client}", &escape(client))
}

/// The document for a page of the flow: its title and HTML.
pub fn render(page: &Page, form: &dyn Fn(&str) -> String) -> (String, String) {
    let t = texts(page.locale);
    let hidden = hidden_fields(page);
    let alert = alert(page);
    let (title, body) = match &page.screen {
        Screen::SignIn { second_factor } => {
            let code_field = if *second_factor {
                format!(
                    "<p><label for=\"second_factor\">{}</label>\
                     <input id=\"second_factor\" name=\"second_factor\" autocomplete=\"one-time-code\" \
                     inputmode=\"numeric\" required></p>",
                    t.second_factor
                )
            } else {
                String::new()
            };
            let register = format!(
                "{REGISTER_PATH}?request_id={}&locale={}",
                escape(&url_encode(&page.request_id)),
                page.locale.as_str()
            );
            (
                t.sign_in_title,
                format!(
                    "<p>{intro}</p>{alert}<form method=\"post\" action=\"{AUTHORIZE_PATH}\">{hidden}\
                     <p><label for=\"national_id\">{run}</label>\
                     <input id=\"national_id\" name=\"national_id\" autocomplete=\"username\" required \
                     placeholder=\"12.345.678-5\" value=\"{typed_run}\"></p>\
                     <p><label for=\"password\">{password}</label>\
                     <input id=\"password\" name=\"password\" type=\"password\" \
                     autocomplete=\"current-password\" required></p>{code_field}\
                     <p><button type=\"submit\">{button}</button></p></form>\
                     <p>{no_account} <a href=\"{register}\">{register_link}</a></p>",
                    intro = with_client(t.sign_in_intro, &page.client_name),
                    run = t.run,
                    typed_run = escape(&form("national_id")),
                    password = t.password,
                    button = t.sign_in_button,
                    no_account = t.no_account,
                    register_link = t.register_link,
                ),
            )
        }
        Screen::Register { problems } => {
            let problem_of = |field| {
                problems
                    .iter()
                    .find(|(f, _)| *f == field)
                    .map(|(f, p)| problem_text(page.locale, *f, *p))
            };
            let summary = if problems.is_empty() {
                String::new()
            } else {
                let items: String = problems
                    .iter()
                    .map(|(f, p)| {
                        format!(
                            "<li><a href=\"#{}\">{}</a></li>",
                            field_name(*f),
                            escape(problem_text(page.locale, *f, *p))
                        )
                    })
                    .collect();
                format!(
                    "<div role=\"alert\"><h2>{}</h2><ul>{items}</ul></div>",
                    t.problems_title
                )
            };
            let input = |field: RegistrationField,
                         label: &str,
                         kind: &str,
                         autocomplete: &str,
                         required: bool,
                         hint: &str| {
                let name = field_name(field);
                let problem = problem_of(field);
                let mut described = Vec::new();
                if !hint.is_empty() {
                    described.push(format!("{name}-hint"));
                }
                if problem.is_some() {
                    described.push(format!("{name}-error"));
                }
                let value = if field == RegistrationField::Password {
                    String::new()
                } else {
                    format!(" value=\"{}\"", escape(&form(name)))
                };
                format!(
                    "<p><label for=\"{name}\">{label}</label>{hint_html}{error_html}\
                     <input id=\"{name}\" name=\"{name}\" type=\"{kind}\" autocomplete=\"{autocomplete}\"{required}{invalid}{describedby}{value}></p>",
                    hint_html = if hint.is_empty() {
                        String::new()
                    } else {
                        format!("<span id=\"{name}-hint\">{hint}</span>")
                    },
                    error_html = problem
                        .map(|p| format!(
                            "<span class=\"error\" id=\"{name}-error\">{}</span>",
                            escape(p)
                        ))
                        .unwrap_or_default(),
                    required = if required { " required" } else { "" },
                    invalid = if problem.is_some() {
                        " aria-invalid=\"true\""
                    } else {
                        ""
                    },
                    describedby = if described.is_empty() {
                        String::new()
                    } else {
                        format!(" aria-describedby=\"{}\"", described.join(" "))
                    },
                )
            };
            (
                t.register_title,
                format!(
                    "<p>{intro}</p>{summary}<form method=\"post\" action=\"{REGISTER_PATH}\" novalidate>{hidden}{fields}\
                     <p><button type=\"submit\">{button}</button></p></form>",
                    intro = with_client(t.register_intro, &page.client_name),
                    fields = [
                        input(
                            RegistrationField::NationalId,
                            t.run,
                            "text",
                            "username",
                            true,
                            "12.345.678-5"
                        ),
                        input(
                            RegistrationField::GivenNames,
                            t.given_names,
                            "text",
                            "given-name",
                            true,
                            ""
                        ),
                        input(
                            RegistrationField::FamilyNames,
                            t.family_names,
                            "text",
                            "family-name",
                            true,
                            ""
                        ),
                        input(
                            RegistrationField::Email,
                            t.email,
                            "email",
                            "email",
                            true,
                            ""
                        ),
                        input(
                            RegistrationField::Phone,
                            &format!("{} {}", t.phone, t.optional),
                            "tel",
                            "tel",
                            false,
                            ""
                        ),
                        input(
                            RegistrationField::Password,
                            t.new_password,
                            "password",
                            "new-password",
                            true,
                            t.password_hint
                        ),
                    ]
                    .concat(),
                    button = t.register_button,
                ),
            )
        }
        Screen::VerifyEmail => (
            t.verify_title,
            format!(
                "{alert}<form method=\"post\" action=\"{VERIFY_EMAIL_PATH}\">{hidden}\
                 <p><label for=\"email_code\">{label}</label>\
                 <input id=\"email_code\" name=\"email_code\" autocomplete=\"one-time-code\" \
                 inputmode=\"numeric\" required></p>\
                 <p><button type=\"submit\">{button}</button></p></form>",
                label = t.email_code,
                button = t.verify_button,
            ),
        ),
        Screen::EnrolTotp {
            secret_base32,
            otpauth_uri,
        } => {
            let qr = qr_svg(otpauth_uri.expose_secret(), t.qr_label);
            let grouped: Vec<String> = secret_base32
                .expose_secret()
                .as_bytes()
                .chunks(4)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
            (
                t.enrol_title,
                format!(
                    "<p>{intro}</p>{alert}{qr}<p>{manual} <code id=\"totp_secret\">{secret}</code></p>\
                     <form method=\"post\" action=\"{ENROL_PATH}\">{hidden}\
                     <p><label for=\"totp_code\">{label}</label>\
                     <input id=\"totp_code\" name=\"totp_code\" autocomplete=\"one-time-code\" \
                     inputmode=\"numeric\" required></p>\
                     <p><button type=\"submit\">{button}</button></p></form>",
                    intro = with_client(t.enrol_intro, &page.client_name),
                    manual = t.enrol_manual,
                    secret = escape(&grouped.join(" ")),
                    label = t.totp_code,
                    button = t.enrol_button,
                ),
            )
        }
        Screen::RecoveryCodes { codes } => {
            let items: String = codes
                .iter()
                .map(|c| format!("<li><code>{}</code></li>", escape(c.expose())))
                .collect();
            (
                t.recovery_title,
                format!(
                    "<p>{intro}</p><ul id=\"recovery_codes\">{items}</ul>\
                     <form method=\"post\" action=\"{CONTINUE_PATH}\">{hidden}\
                     <p><button type=\"submit\">{button}</button></p></form>",
                    intro = t.recovery_intro,
                    button = t.continue_button,
                ),
            )
        }
        Screen::Consent { attributes } => {
            let items: String = attributes
                .iter()
                .map(|a| format!("<li>{}</li>", escape(attribute_text(page.locale, *a))))
                .collect();
            (
                t.consent_title,
                format!(
                    "<p>{intro}</p><ul>{items}</ul>\
                     <form method=\"post\" action=\"{CONSENT_PATH}\">{hidden}\
                     <p><button type=\"submit\" name=\"decision\" value=\"allow\">{allow}</button>\
                     <button type=\"submit\" name=\"decision\" value=\"deny\">{deny}</button></p></form>",
                    intro = with_client(t.consent_intro, &page.client_name),
                    allow = t.allow,
                    deny = t.deny,
                ),
            )
        }
    };
    (title.to_owned(), body)
}

/// The otpauth URI as an inline SVG QR code (no script, no image fetch).
fn qr_svg(data: &str, label: &str) -> String {
    match qrcode::QrCode::new(data.as_bytes()) {
        Ok(code) => {
            let svg = code
                .render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(200, 200)
                .build();
            let start = svg.find("<svg").unwrap_or(0);
            let svg = svg.get(start..).unwrap_or_default();
            format!(
                "<figure role=\"img\" aria-label=\"{}\">{}</figure>",
                escape(label),
                svg.replacen("<svg", "<svg aria-hidden=\"true\"", 1)
            )
        }
        Err(_) => String::new(),
    }
}

fn url_encode(raw: &str) -> String {
    url::form_urlencoded::byte_serialize(raw.as_bytes()).collect()
}
