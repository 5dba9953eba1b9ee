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
        "error.detail",
        [
            "{text} (server: {detail})",
            "{text} (сервер жауабы: {detail})",
            "{text} (ответ сервера: {detail})",
        ],
    ),
    (
        "error.forbidden",
        [
            "This partner account is inactive: the operator has deactivated it.",
            "Бұл серіктес тіркелгісі белсенді емес: оператор оны өшірген.",
            "Этот аккаунт партнёра неактивен: оператор его деактивировал.",
        ],
    ),
    (
        "error.conflict",
        [
            "That conflicts with the current state. Refresh and try again.",
            "Бұл әрекет қазіргі күйге қайшы келеді. Бетті жаңартып, қайталап көріңіз.",
            "Это противоречит текущему состоянию. Обновите страницу и попробуйте снова.",
        ],
    ),
    (
        "error.conflict.already_enrolled",
        [
            "A user with this external ID is already enrolled.",
            "Бұл сыртқы ID-мен пайдаланушы бұрын тіркелген.",
            "Пользователь с этим внешним ID уже зарегистрирован.",
        ],
    ),
    (
        "error.conflict.session_not_pending",
        [
            "This session has already ended.",
            "Бұл сессия аяқталып қойған.",
            "Эта сессия уже завершена.",
        ],
    ),
    (
        "error.conflict.idempotency",
        [
            "This Idempotency-Key was already used with a different request.",
            "Бұл Idempotency-Key басқа сұрауда қолданылған.",
            "Этот Idempotency-Key уже использован с другим запросом.",
        ],
    ),
    (
        "error.conflict.partner_exists",
        [
            "A partner with this ID already exists.",
            "Мұндай ID-мен серіктес бұрыннан бар.",
            "Партнёр с таким ID уже существует.",
        ],
    ),
    (
        "error.conflict.reader_offline",
        [
            "The scanner is offline.",
            "Сканер желіден тыс.",
            "Сканер не в сети.",
        ],
    ),
    (
        "error.conflict.reader_busy",
        [
            "The scanner is busy with another session. Try again in a moment.",
            "Сканер басқа сессиямен бос емес. Сәлден соң қайталап көріңіз.",
            "Сканер занят другой сессией. Попробуйте чуть позже.",
        ],
    ),
    (
        "error.conflict.reader_at_door",
        [
            "This scanner belongs to a door and does not take sessions.",
            "Бұл сканер есікке бекітілген, сессия қабылдамайды.",
            "Этот сканер закреплён за дверью и не принимает сессии.",
        ],
    ),
    (
        "error.too_large",
        [
            "The request is too large.",
            "Сұрау тым үлкен.",
            "Запрос слишком большой.",
        ],
    ),
    (
        "error.rate_limited",
        [
            "Too many requests. Wait a little and try again.",
            "Сұрау тым көп. Біраз күтіп, қайталап көріңіз.",
            "Слишком много запросов. Подождите немного и попробуйте снова.",
        ],
    ),
    (
        "error.rate_limited_for",
        [
            "Too many requests. Try again in {seconds} s.",
            "Сұрау тым көп. {seconds} секундтан кейін қайталап көріңіз.",
            "Слишком много запросов. Повторите через {seconds} с.",
        ],
    ),
    (
        "error.unavailable",
        [
            "The server is not ready right now. Try again in a minute.",
            "Сервер қазір дайын емес. Бір минуттан кейін қайталап көріңіз.",
            "Сервер сейчас не готов. Повторите через минуту.",
        ],
    ),
    (
        "error.internal",
        [
            "The server could not complete the request (internal error). Try again later.",
            "Сервер сұрауды орындай алмады (ішкі қате). Кейінірек қайталап көріңіз.",
            "Сервер не смог выполнить запрос (внутренняя ошибка). Повторите позже.",
        ],
    ),
    (
        "error.webhook_url",
        [
            "This webhook URL is not accepted. Give a full http(s) URL the server is allowed to reach.",
            "Бұл вебхук URL-і қабылданбады. Сервер жете алатын толық http(s) URL енгізіңіз.",
            "Этот URL вебхука не принят. Укажите полный http(s) URL, доступный серверу.",
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
