//! Message catalogs for the hosted pages, the two dashboards and reader feedback: en, kk, ru.
//!
//! The pages use the typed [`Catalog`]; the dashboards use keyed tables ([`Entry`]) in
//! `common`, `admin` and `partner`, handed to their scripts as JSON.
//!
//! Invariant: every message exists in all three languages, written by people (a test checks
//! that no entry is empty or merely copied from English).

use crate::core::Language;

pub mod admin;
pub mod common;
pub mod partner;

/// One dashboard message: a key and its text in en, kk and ru (in that order).
pub type Entry = (&'static str, [&'static str; 3]);

/// Keys whose text is the same in every language (codes, product and format names).
pub const SAME_IN_ALL: &[&str] = &[
    "lang.en",
    "lang.kk",
    "lang.ru",
    "format.csv",
    "format.jsonl",
    "brand",
];

/// The column of `lang` in an [`Entry`].
fn column(lang: Language) -> usize {
    match lang {
        Language::En => 0,
        Language::Kk => 1,
        Language::Ru => 2,
    }
}

/// The dashboard messages of one dashboard in one language, as a JSON object for its script:
/// the common table, then the dashboard's own.
pub fn dashboard_messages(
    lang: Language,
    own: &[Entry],
) -> serde_json::Map<String, serde_json::Value> {
    let i = column(lang);
    common::COMMON
        .iter()
        .chain(own)
        .map(|(k, t)| (k.to_string(), serde_json::Value::from(t[i])))
        .collect()
}

/// A common dashboard message in `lang` (server-rendered parts: login forms, titles).
pub fn common(lang: Language, key: &str) -> &'static str {
    let i = column(lang);
    common::COMMON
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, t)| t[i])
        .unwrap_or("")
}

/// Every user-visible string of the hosted pages.
pub struct Catalog {
    pub enroll_title: &'static str,
    pub identify_title: &'static str,
    pub place_palm: &'static str,
    pub hold_hint: &'static str,
    /// `{time}` is replaced by the expiry time.
    pub expires_at: &'static str,
    pub waiting: &'static str,
    pub cancel: &'static str,
    pub cancelled: &'static str,
    pub expired_title: &'static str,
    pub expired_body: &'static str,
    pub gone_title: &'static str,
    pub gone_body: &'static str,
    pub not_found_title: &'static str,
    pub not_found_body: &'static str,
    pub completed: &'static str,
    pub failed: &'static str,
    /// Why a session failed, and what the person can do (SPEC 4 fail reasons; `cancelled` is
    /// [`Catalog::cancelled`]).
    pub fail_no_match: &'static str,
    pub fail_already_enrolled: &'static str,
    pub fail_low_quality: &'static str,
    pub fail_liveness_failed: &'static str,
    pub fail_reader_offline: &'static str,
    /// A page asked for a reader too often from one address: `{seconds}` is the wait.
    pub rate_limited: &'static str,
    /// A page's request failed on the server (the log could not be written).
    pub server_error: &'static str,
    pub choose_reader: &'static str,
    pub no_readers: &'static str,
    /// `{reader}` is replaced by the reader's id.
    pub armed: &'static str,
    pub retry: &'static str,
    pub reader_offline: &'static str,
    pub reader_busy: &'static str,
    /// Reader feedback after a door decision.
    pub door_granted: &'static str,
    pub door_denied: &'static str,
    /// Granted, but the door's relay board is down: the door will not open.
    pub door_unavailable: &'static str,
    /// Reader feedback when the upstream Pass API (upstream mode) could not be reached.
    pub upstream_unavailable: &'static str,
}

pub const EN: Catalog = Catalog {
    enroll_title: "Palm enrollment",
    identify_title: "Palm identification",
    place_palm: "Place your palm on the scanner",
    hold_hint: "Hold your hand flat, about 5 cm above the reader, until it confirms the scan.",
    expires_at: "This link is valid until {time}.",
    waiting: "Waiting for a palm scan…",
    cancel: "Cancel",
    cancelled: "Verification cancelled.",
    expired_title: "Link expired",
    expired_body: "This link is no longer valid. Return to the app that sent you here and start again.",
    gone_title: "Link already used",
    gone_body: "This verification has already ended. You can close this page.",
    not_found_title: "Not found",
    not_found_body: "This link does not exist. Check that you copied it completely.",
    completed: "Verification completed.",
    failed: "Verification failed.",
    fail_no_match: "Your palm was not recognised. If you have not enrolled yet, enroll first; otherwise start again from the app that sent you here.",
    fail_already_enrolled: "This palm is already enrolled. There is nothing more to do.",
    fail_low_quality: "The scans were not clear enough. Start again from the app that sent you here, and hold your hand flat and still.",
    fail_liveness_failed: "The scanner could not confirm a live hand. Start again from the app that sent you here, with a bare hand.",
    fail_reader_offline: "The scanner went offline. Start again from the app that sent you here.",
    rate_limited: "Too many attempts from this network. Wait {seconds} s and try again.",
    server_error: "Something went wrong on our side. Please try again.",
    choose_reader: "Choose a scanner:",
    no_readers: "No scanner is online. Ask a member of staff for help.",
    armed: "Scanner {reader} is ready — place your palm on it.",
    retry: "The scan was not clear. Please try again.",
    reader_offline: "This scanner is offline. Choose another one.",
    reader_busy: "This scanner is in use by someone else. Choose another one or wait a moment.",
    door_granted: "Access granted. Welcome!",
    door_denied: "Access denied.",
    door_unavailable: "Access granted, but the door cannot be opened right now. Please contact security.",
    upstream_unavailable: "Identification is unavailable right now. Please try again.",
};

pub const KK: Catalog = Catalog {
    enroll_title: "Алақанды тіркеу",
    identify_title: "Алақан арқылы сәйкестендіру",
    place_palm: "Алақаныңызды сканерге қойыңыз",
    hold_hint: "Қолыңызды түзу ұстап, құрылғыдан шамамен 5 см биіктікте сканерлеу расталғанша ұстап тұрыңыз.",
    expires_at: "Сілтеменің жарамдылық мерзімі аяқталатын уақыт: {time}.",
    waiting: "Алақанды сканерлеу күтілуде…",
    cancel: "Бас тарту",
    cancelled: "Тексеру тоқтатылды.",
    expired_title: "Сілтеменің мерзімі өтті",
    expired_body: "Бұл сілтеме енді жарамсыз. Сізді осында жіберген қолданбаға оралып, қайтадан бастаңыз.",
    gone_title: "Сілтеме бұрын пайдаланылған",
    gone_body: "Бұл тексеру аяқталған. Бұл бетті жаба аласыз.",
    not_found_title: "Табылмады",
    not_found_body: "Мұндай сілтеме жоқ. Оны толық көшіргеніңізді тексеріңіз.",
    completed: "Тексеру сәтті аяқталды.",
    failed: "Тексеру сәтсіз аяқталды.",
    fail_no_match: "Алақаныңыз танылмады. Әлі тіркелмеген болсаңыз, алдымен тіркеліңіз; әйтпесе сізді осында жіберген қолданбаға оралып, қайтадан бастаңыз.",
    fail_already_enrolled: "Бұл алақан бұрын тіркелген. Басқа ештеңе істеудің қажеті жоқ.",
    fail_low_quality: "Сканерлеу жеткілікті анық болмады. Сізді осында жіберген қолданбаға оралып, қайтадан бастаңыз және қолыңызды түзу әрі қозғалтпай ұстаңыз.",
    fail_liveness_failed: "Сканер тірі қолды растай алмады. Сізді осында жіберген қолданбаға оралып, қолғапсыз қолмен қайтадан бастаңыз.",
    fail_reader_offline: "Сканер желіден ажырап қалды. Сізді осында жіберген қолданбаға оралып, қайтадан бастаңыз.",
    rate_limited: "Бұл желіден әрекет тым көп болды. {seconds} секунд күтіп, қайталап көріңіз.",
    server_error: "Сервер жағында қате орын алды. Қайталап көріңіз.",
    choose_reader: "Сканерді таңдаңыз:",
    no_readers: "Қосулы сканер жоқ. Қызметкерден көмек сұраңыз.",
    armed: "{reader} сканері дайын — алақаныңызды соған қойыңыз.",
    retry: "Сканерлеу анық болмады. Қайталап көріңіз.",
    reader_offline: "Бұл сканер желіден тыс. Басқасын таңдаңыз.",
    reader_busy: "Бұл сканерді басқа біреу пайдаланып жатыр. Басқасын таңдаңыз немесе біраз күтіңіз.",
    door_granted: "Кіруге рұқсат етілді. Қош келдіңіз!",
    door_denied: "Кіруге рұқсат жоқ.",
    door_unavailable: "Кіруге рұқсат етілді, бірақ есікті қазір ашу мүмкін емес. Күзет қызметіне хабарласыңыз.",
    upstream_unavailable: "Сәйкестендіру қазір қолжетімсіз. Қайталап көріңіз.",
};

pub const RU: Catalog = Catalog {
    enroll_title: "Регистрация ладони",
    identify_title: "Идентификация по ладони",
    place_palm: "Поднесите ладонь к сканеру",
    hold_hint: "Держите руку ровно, примерно в 5 см над считывателем, пока он не подтвердит сканирование.",
    expires_at: "Ссылка действительна до {time}.",
    waiting: "Ожидание сканирования ладони…",
    cancel: "Отменить",
    cancelled: "Проверка отменена.",
    expired_title: "Срок действия ссылки истёк",
    expired_body: "Эта ссылка больше не действует. Вернитесь в приложение, которое направило вас сюда, и начните заново.",
    gone_title: "Ссылка уже использована",
    gone_body: "Эта проверка уже завершена. Страницу можно закрыть.",
    not_found_title: "Не найдено",
    not_found_body: "Такой ссылки не существует. Проверьте, что скопировали её полностью.",
    completed: "Проверка успешно завершена.",
    failed: "Проверка не пройдена.",
    fail_no_match: "Ладонь не опознана. Если вы ещё не зарегистрированы, сначала пройдите регистрацию; иначе вернитесь в приложение, которое направило вас сюда, и начните заново.",
    fail_already_enrolled: "Эта ладонь уже зарегистрирована. Больше ничего делать не нужно.",
    fail_low_quality: "Сканы получились недостаточно чёткими. Вернитесь в приложение, которое направило вас сюда, и начните заново, держа руку ровно и неподвижно.",
    fail_liveness_failed: "Сканер не смог подтвердить, что это живая рука. Вернитесь в приложение, которое направило вас сюда, и начните заново без перчатки.",
    fail_reader_offline: "Сканер отключился. Вернитесь в приложение, которое направило вас сюда, и начните заново.",
    rate_limited: "Слишком много попыток из этой сети. Подождите {seconds} с и попробуйте ещё раз.",
    server_error: "На нашей стороне что-то пошло не так. Попробуйте ещё раз.",
    choose_reader: "Выберите сканер:",
    no_readers: "Нет включённых сканеров. Обратитесь к сотруднику.",
    armed: "Сканер {reader} готов — поднесите к нему ладонь.",
    retry: "Сканирование получилось нечётким. Попробуйте ещё раз.",
    reader_offline: "Этот сканер не в сети. Выберите другой.",
    reader_busy: "Этот сканер сейчас занят другим человеком. Выберите другой или немного подождите.",
    door_granted: "Доступ разрешён. Добро пожаловать!",
    door_denied: "Доступ запрещён.",
    door_unavailable: "Доступ разрешён, но дверь сейчас не открыть. Обратитесь в охрану.",
    upstream_unavailable: "Идентификация сейчас недоступна. Попробуйте ещё раз.",
};

pub fn catalog(lang: Language) -> &'static Catalog {
    match lang {
        Language::En => &EN,
        Language::Kk => &KK,
        Language::Ru => &RU,
    }
}

/// The best of en/kk/ru for an `Accept-Language` header (first listed that we speak).
pub fn from_accept_language(header: Option<&str>) -> Language {
    header
        .into_iter()
        .flat_map(|h| h.split(','))
        .filter_map(|part| part.split(';').next())
        .filter_map(|tag| Language::parse(tag.trim().get(..2)?.to_ascii_lowercase().as_str()))
        .next()
        .unwrap_or(Language::En)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(c: &Catalog) -> Vec<&'static str> {
        vec![
            c.enroll_title,
            c.identify_title,
            c.place_palm,
            c.hold_hint,
            c.expires_at,
            c.waiting,
            c.cancel,
            c.cancelled,
            c.expired_title,
            c.expired_body,
            c.gone_title,
            c.gone_body,
            c.not_found_title,
            c.not_found_body,
            c.completed,
            c.failed,
            c.fail_no_match,
            c.fail_already_enrolled,
            c.fail_low_quality,
            c.fail_liveness_failed,
            c.fail_reader_offline,
            c.rate_limited,
            c.server_error,
            c.upstream_unavailable,
        ]
    }

    #[test]
    fn every_message_is_translated() {
        let en = entries(&EN);
        for c in [&KK, &RU] {
            for (i, (t, e)) in entries(c).iter().zip(&en).enumerate() {
                assert!(!t.trim().is_empty(), "entry {i} empty");
                assert_ne!(t, e, "entry {i} copied from English");
                assert!(
                    t.chars().any(|ch| ('\u{0400}'..='\u{04FF}').contains(&ch)),
                    "entry {i} not Cyrillic"
                );
            }
            assert!(c.expires_at.contains("{time}"));
            assert!(c.armed.contains("{reader}"));
            assert!(c.rate_limited.contains("{seconds}"));
        }
        // Kazakh uses letters Russian does not.
        let kk: String = entries(&KK).concat();
        assert!(kk.chars().any(|c| "әғқңөұүһі".contains(c)));
    }

    #[test]
    fn every_dashboard_message_is_translated_once() {
        let mut keys = std::collections::HashSet::new();
        for (key, [en, kk, ru]) in common::COMMON
            .iter()
            .chain(admin::ADMIN)
            .chain(partner::PARTNER)
        {
            assert!(keys.insert(*key), "{key} defined twice");
            for t in [en, kk, ru] {
                assert!(!t.trim().is_empty(), "{key} has an empty text");
            }
            if SAME_IN_ALL.contains(key) {
                continue;
            }
            for t in [kk, ru] {
                assert_ne!(t, en, "{key} copied from English");
                assert!(
                    t.chars().any(|ch| ('\u{0400}'..='\u{04FF}').contains(&ch)),
                    "{key} not Cyrillic: {t}"
                );
            }
            // Placeholders survive translation.
            for p in en
                .split('{')
                .skip(1)
                .filter_map(|x| x.split_once('}'))
                .map(|x| x.0)
            {
                assert!(
                    kk.contains(&format!("{{{p}}}")) && ru.contains(&format!("{{{p}}}")),
                    "{key} loses {{{p}}}"
                );
            }
        }
    }

    #[test]
    fn accept_language_picks_first_spoken() {
        assert_eq!(
            from_accept_language(Some("de-DE,ru;q=0.8,en;q=0.5")),
            Language::Ru
        );
        assert_eq!(from_accept_language(Some("kk-KZ")), Language::Kk);
        assert_eq!(from_accept_language(None), Language::En);
    }
}
