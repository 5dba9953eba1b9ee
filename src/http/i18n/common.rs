//! Messages both dashboards use: login, navigation chrome, generic words and errors.

use super::Entry;

pub const COMMON: &[Entry] = &[
    ("brand", ["palmgate", "palmgate", "palmgate"]),
    ("lang.en", ["English", "English", "English"]),
    ("lang.kk", ["Қазақша", "Қазақша", "Қазақша"]),
    ("lang.ru", ["Русский", "Русский", "Русский"]),
    ("format.csv", ["CSV", "CSV", "CSV"]),
    ("format.jsonl", ["JSON Lines", "JSON Lines", "JSON Lines"]),
    ("language", ["Language", "Тіл", "Язык"]),
    (
        "login.admin_title",
        ["Operator sign-in", "Оператордың кіруі", "Вход оператора"],
    ),
    (
        "login.partner_title",
        ["Partner sign-in", "Серіктестің кіруі", "Вход партнёра"],
    ),
    (
        "login.admin_token",
        ["Admin token", "Әкімші токені", "Токен администратора"],
    ),
    ("login.api_key", ["API key", "API кілті", "API-ключ"]),
    ("login.submit", ["Sign in", "Кіру", "Войти"]),
    (
        "login.failed",
        [
            "That credential is not valid.",
            "Бұл тіркелгі деректері жарамсыз.",
            "Эти учётные данные недействительны.",
        ],
    ),
    (
        "login.inactive",
        [
            "This partner account is inactive: the operator has deactivated it. Ask the operator to reactivate it.",
            "Бұл серіктес тіркелгісі белсенді емес: оператор оны өшірген. Қайта іске қосуды операторнан сұраңыз.",
            "Этот аккаунт партнёра неактивен: оператор его деактивировал. Попросите оператора активировать его снова.",
        ],
    ),
    (
        "login.throttled",
        [
            "Too many attempts. Wait a minute and try again.",
            "Әрекет тым көп. Бір минут күтіп, қайталап көріңіз.",
            "Слишком много попыток. Подождите минуту и попробуйте снова.",
        ],
    ),
    (
        "login.disabled",
        [
            "The admin API is disabled: set PALMGATE_ADMIN_TOKEN and restart.",
            "Әкімші API өшірулі: PALMGATE_ADMIN_TOKEN орнатып, қайта іске қосыңыз.",
            "API администратора отключён: задайте PALMGATE_ADMIN_TOKEN и перезапустите.",
        ],
    ),
    ("logout", ["Sign out", "Шығу", "Выйти"]),
    ("loading", ["Loading…", "Жүктелуде…", "Загрузка…"]),
    (
        "error.generic",
        [
            "Something went wrong: {message}",
            "Бірдеңе дұрыс болмады: {message}",
            "Что-то пошло не так: {message}",
        ],
    ),
    (
        "error.session",
        [
            "Your sign-in has ended. Sign in again.",
            "Кіру мерзімі аяқталды. Қайта кіріңіз.",
            "Сеанс входа завершён. Войдите снова.",
        ],
    ),
    ("confirm", ["Confirm", "Растау", "Подтвердить"]),
    ("cancel", ["Cancel", "Бас тарту", "Отмена"]),
    ("save", ["Save", "Сақтау", "Сохранить"]),
    ("refresh", ["Refresh", "Жаңарту", "Обновить"]),
    ("yes", ["Yes", "Иә", "Да"]),
    ("no", ["No", "Жоқ", "Нет"]),
    ("none", ["None yet.", "Әзірге жоқ.", "Пока нет."]),
    ("time", ["Time", "Уақыт", "Время"]),
    ("status", ["Status", "Күйі", "Статус"]),
];
