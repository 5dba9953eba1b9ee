//! Messages of the partner dashboard (`/dashboard`).
//!
//! Keys start with `partner.`; `{name}` placeholders are filled in by the script
//! (`PG.t(key, {name: value})`) and must survive translation.

use super::Entry;

pub const PARTNER: &[Entry] = &[
    // Page and tabs.
    (
        "partner.title",
        [
            "Partner dashboard",
            "Серіктестің басқару тақтасы",
            "Панель партнёра",
        ],
    ),
    ("partner.tabs", ["Sections", "Бөлімдер", "Разделы"]),
    ("partner.tab.webhook", ["Webhook", "Вебхук", "Вебхук"]),
    (
        "partner.tab.deliveries",
        ["Deliveries", "Жеткізулер", "Доставки"],
    ),
    ("partner.tab.sessions", ["Sessions", "Сессиялар", "Сессии"]),
    (
        "partner.tab.users",
        ["Users", "Пайдаланушылар", "Пользователи"],
    ),
    ("partner.actions", ["Actions", "Әрекеттер", "Действия"]),
    ("partner.copy", ["Copy", "Көшіру", "Копировать"]),
    ("partner.copied", ["Copied.", "Көшірілді.", "Скопировано."]),
    (
        "partner.updated",
        ["Updated {time}", "Жаңартылды: {time}", "Обновлено: {time}"],
    ),
    // Webhook tab.
    (
        "partner.webhook.current",
        ["Current webhook", "Ағымдағы вебхук", "Текущий вебхук"],
    ),
    (
        "partner.webhook.none",
        [
            "No webhook URL is set yet. Set one below to receive session results.",
            "Вебхук мекенжайы әлі орнатылмаған. Сессия нәтижелерін алу үшін оны төменде көрсетіңіз.",
            "Адрес вебхука ещё не задан. Укажите его ниже, чтобы получать результаты сессий.",
        ],
    ),
    (
        "partner.webhook.url",
        [
            "Webhook URL",
            "Вебхук мекенжайы (URL)",
            "Адрес вебхука (URL)",
        ],
    ),
    (
        "partner.webhook.url_hint",
        [
            "palmgate sends signed results to this address with POST.",
            "palmgate қол қойылған нәтижелерді осы мекенжайға POST әдісімен жібереді.",
            "palmgate отправляет на этот адрес подписанные результаты методом POST.",
        ],
    ),
    (
        "partner.webhook.url_required",
        [
            "Enter the webhook URL.",
            "Вебхук мекенжайын енгізіңіз.",
            "Введите адрес вебхука.",
        ],
    ),
    (
        "partner.webhook.status.active",
        ["Active", "Белсенді", "Активен"],
    ),
    (
        "partner.webhook.status.disabled",
        ["Disabled", "Өшірілген", "Отключён"],
    ),
    (
        "partner.webhook.disabled_note",
        [
            "Deliveries stopped after repeated failures. New events are kept: re-enable the webhook, then redeliver or recover them.",
            "Қайталанған сәтсіздіктерден кейін жеткізу тоқтатылды. Жаңа оқиғалар сақталады: вебхукты қайта қосып, содан кейін оларды қайта жеткізіңіз немесе қалпына келтіріңіз.",
            "Доставка остановлена после повторных ошибок. Новые события сохраняются: включите вебхук снова, затем доставьте их повторно или восстановите.",
        ],
    ),
    ("partner.webhook.events", ["Events", "Оқиғалар", "События"]),
    (
        "partner.webhook.event.session",
        [
            "Session results (completed, failed, expired)",
            "Сессия нәтижелері (аяқталды, сәтсіз, мерзімі өтті)",
            "Результаты сессий (завершена, не удалась, истекла)",
        ],
    ),
    (
        "partner.webhook.event.access",
        [
            "Door access decisions (attendance)",
            "Есікке кіру шешімдері (келу-кету есебі)",
            "Решения о доступе к дверям (учёт посещаемости)",
        ],
    ),
    (
        "partner.webhook.events_required",
        [
            "Choose at least one kind of event.",
            "Кемінде бір оқиға түрін таңдаңыз.",
            "Выберите хотя бы один тип событий.",
        ],
    ),
    (
        "partner.webhook.last_failure",
        ["Last failure", "Соңғы сәтсіздік", "Последняя ошибка"],
    ),
    ("partner.webhook.never", ["Never", "Болған жоқ", "Не было"]),
    (
        "partner.webhook.previous_until",
        [
            "Previous secret still signs until",
            "Алдыңғы құпия кілттің жарамдылық мерзімі",
            "Предыдущий секрет подписывает до",
        ],
    ),
    (
        "partner.webhook.set_title",
        [
            "Set the webhook URL",
            "Вебхук мекенжайын орнату",
            "Задать адрес вебхука",
        ],
    ),
    (
        "partner.webhook.save",
        ["Save webhook", "Вебхукты сақтау", "Сохранить вебхук"],
    ),
    (
        "partner.webhook.save_hint",
        [
            "Saving issues a new signing secret.",
            "Сақтаған сайын жаңа қолтаңба құпия кілті беріледі.",
            "При каждом сохранении выдаётся новый секрет подписи.",
        ],
    ),
    (
        "partner.webhook.saved",
        ["Webhook saved.", "Вебхук сақталды.", "Вебхук сохранён."],
    ),
    (
        "partner.webhook.secret_title",
        ["Signing secret", "Қолтаңба құпия кілті", "Секрет подписи"],
    ),
    (
        "partner.webhook.secret_note",
        [
            "Copy this secret now and keep it safe: it will not be shown again.",
            "Бұл құпия кілтті дәл қазір көшіріп, қауіпсіз жерде сақтаңыз: ол қайта көрсетілмейді.",
            "Скопируйте этот секрет сейчас и надёжно сохраните: он больше не будет показан.",
        ],
    ),
    (
        "partner.webhook.secret_done",
        ["Done, hide it", "Дайын, жасыру", "Готово, скрыть"],
    ),
    (
        "partner.webhook.test",
        [
            "Send test ping",
            "Сынақ пингін жіберу",
            "Отправить тестовый пинг",
        ],
    ),
    (
        "partner.webhook.test_queued",
        [
            "Test ping queued, waiting for your endpoint to answer…",
            "Сынақ пингі кезекке қойылды, мекенжайыңыздың жауабы күтілуде…",
            "Тестовый пинг поставлен в очередь, ждём ответа вашего адреса…",
        ],
    ),
    (
        "partner.webhook.test_ok",
        [
            "Test ping delivered: HTTP {code} in {ms} ms.",
            "Сынақ пингі жеткізілді: HTTP {code}, {ms} мс ішінде.",
            "Тестовый пинг доставлен: HTTP {code} за {ms} мс.",
        ],
    ),
    (
        "partner.webhook.test_bad",
        [
            "Your endpoint did not accept the test ping: {answer}. It will be retried; see the Deliveries tab.",
            "Мекенжайыңыз сынақ пингін қабылдамады: {answer}. Ол қайта жіберіледі; «Жеткізулер» қойындысын қараңыз.",
            "Ваш адрес не принял тестовый пинг: {answer}. Попытка будет повторена; смотрите вкладку «Доставки».",
        ],
    ),
    (
        "partner.webhook.test_held",
        [
            "The webhook is disabled: the test ping is held. Re-enable the webhook, then redeliver the ping.",
            "Вебхук өшірулі: сынақ пингі ұсталып тұр. Вебхукты қайта қосып, содан кейін пингті қайта жеткізіңіз.",
            "Вебхук отключён: тестовый пинг задержан. Включите вебхук снова, затем доставьте пинг повторно.",
        ],
    ),
    (
        "partner.webhook.test_waiting",
        [
            "No answer yet; follow the ping on the Deliveries tab.",
            "Әзірге жауап жоқ; пингті «Жеткізулер» қойындысынан бақылаңыз.",
            "Ответа пока нет; следите за пингом на вкладке «Доставки».",
        ],
    ),
    (
        "partner.webhook.rotate",
        ["Rotate secret", "Құпия кілтті ауыстыру", "Сменить секрет"],
    ),
    (
        "partner.webhook.rotate_confirm",
        [
            "Issue a new signing secret? The current one keeps signing alongside it for 24 hours, then stops.",
            "Жаңа қолтаңба құпия кілтін шығару керек пе? Ағымдағы кілт жаңасымен қатар тағы 24 сағат қолтаңба қояды, содан кейін тоқтайды.",
            "Выпустить новый секрет подписи? Текущий будет подписывать вместе с ним ещё 24 часа, затем перестанет.",
        ],
    ),
    (
        "partner.webhook.enable",
        [
            "Re-enable webhook",
            "Вебхукты қайта қосу",
            "Снова включить вебхук",
        ],
    ),
    (
        "partner.webhook.enabled",
        [
            "Webhook re-enabled.",
            "Вебхук қайта қосылды.",
            "Вебхук снова включён.",
        ],
    ),
    (
        "partner.webhook.recover_title",
        [
            "Recover missed deliveries",
            "Жеткізілмей қалғандарды қалпына келтіру",
            "Восстановить пропущенные доставки",
        ],
    ),
    (
        "partner.webhook.recover_since",
        [
            "Redeliver everything not delivered since",
            "Осы уақыттан бері жеткізілмегеннің бәрін қайта жіберу",
            "Повторно отправить всё недоставленное, начиная с",
        ],
    ),
    (
        "partner.webhook.recover_hint",
        [
            "In your local time.",
            "Жергілікті уақытыңыз бойынша.",
            "По вашему местному времени.",
        ],
    ),
    (
        "partner.webhook.recover",
        ["Recover", "Қалпына келтіру", "Восстановить"],
    ),
    (
        "partner.webhook.recover_need_time",
        [
            "Choose a date and time.",
            "Күн мен уақытты таңдаңыз.",
            "Выберите дату и время.",
        ],
    ),
    (
        "partner.webhook.recovered",
        [
            "Deliveries queued again: {count}.",
            "Қайта кезекке қойылған жеткізулер: {count}.",
            "Повторно поставлено в очередь доставок: {count}.",
        ],
    ),
    // Deliveries tab.
    (
        "partner.deliveries.title",
        [
            "Webhook deliveries",
            "Вебхук жеткізулері",
            "Доставки вебхуков",
        ],
    ),
    ("partner.deliveries.filter", ["Show", "Көрсету", "Показать"]),
    ("partner.deliveries.all", ["All", "Барлығы", "Все"]),
    (
        "partner.deliveries.auto",
        [
            "Refresh automatically",
            "Автоматты түрде жаңарту",
            "Обновлять автоматически",
        ],
    ),
    (
        "partner.deliveries.show_attempts",
        ["Show attempts", "Талпыныстарды көрсету", "Показать попытки"],
    ),
    (
        "partner.deliveries.redeliver",
        ["Redeliver", "Қайта жеткізу", "Доставить снова"],
    ),
    (
        "partner.deliveries.redelivered",
        [
            "Delivery {id} queued again.",
            "{id} жеткізуі қайта кезекке қойылды.",
            "Доставка {id} снова поставлена в очередь.",
        ],
    ),
    (
        "partner.deliveries.no_answer",
        ["no answer yet", "әзірге жауап жоқ", "ответа пока нет"],
    ),
    (
        "partner.deliveries.next_attempt",
        [
            "Next attempt {time}",
            "Келесі талпыныс: {time}",
            "Следующая попытка: {time}",
        ],
    ),
    (
        "partner.delivery.pending",
        ["Pending", "Кезекте", "В очереди"],
    ),
    (
        "partner.delivery.delivered",
        ["Delivered", "Жеткізілді", "Доставлено"],
    ),
    (
        "partner.delivery.failed",
        ["Failed", "Жеткізілмеді", "Не доставлено"],
    ),
    ("partner.delivery.held", ["Held", "Кідіртілген", "Отложено"]),
    (
        "partner.event.ping",
        ["Test ping", "Сынақ пингі", "Тестовый пинг"],
    ),
    (
        "partner.event.completed",
        ["Session completed", "Сессия аяқталды", "Сессия завершена"],
    ),
    (
        "partner.event.failed",
        [
            "Session failed",
            "Сессия сәтсіз аяқталды",
            "Сессия не удалась",
        ],
    ),
    (
        "partner.event.expired",
        [
            "Session expired",
            "Сессияның мерзімі өтті",
            "Сессия истекла",
        ],
    ),
    (
        "partner.event.access",
        ["Door access", "Есікке кіру", "Доступ к двери"],
    ),
    ("partner.col.delivery", ["Delivery", "Жеткізу", "Доставка"]),
    ("partner.col.event", ["Event", "Оқиға", "Событие"]),
    (
        "partner.col.attempts",
        ["Attempts", "Талпыныстар", "Попытки"],
    ),
    (
        "partner.col.last_answer",
        ["Last answer", "Соңғы жауап", "Последний ответ"],
    ),
    ("partner.col.created", ["Created", "Құрылды", "Создано"]),
    (
        "partner.attempt.number",
        ["Attempt {n}", "{n}-талпыныс", "Попытка {n}"],
    ),
    (
        "partner.attempt.code",
        ["HTTP status", "HTTP коды", "Код HTTP"],
    ),
    ("partner.attempt.error", ["Error", "Қате", "Ошибка"]),
    (
        "partner.attempt.latency",
        ["Latency", "Жауап уақыты", "Время ответа"],
    ),
    ("partner.attempt.ms", ["{ms} ms", "{ms} мс", "{ms} мс"]),
    ("partner.attempt.response", ["Response", "Жауап", "Ответ"]),
    (
        "partner.attempt.empty",
        ["(empty answer)", "(бос жауап)", "(пустой ответ)"],
    ),
    (
        "partner.attempt.none",
        [
            "No attempt yet.",
            "Әзірге талпыныс жасалған жоқ.",
            "Попыток ещё не было.",
        ],
    ),
    // Sessions tab.
    (
        "partner.sessions.start_title",
        ["Start a session", "Сессияны бастау", "Начать сессию"],
    ),
    ("partner.sessions.type", ["Type", "Түрі", "Тип"]),
    (
        "partner.type.enroll",
        ["Enrollment", "Тіркеу", "Регистрация"],
    ),
    (
        "partner.type.identify",
        ["Identification", "Сәйкестендіру", "Идентификация"],
    ),
    (
        "partner.sessions.external_id",
        ["External ID", "Сыртқы ID", "Внешний ID"],
    ),
    (
        "partner.sessions.username",
        [
            "Name (optional)",
            "Аты (міндетті емес)",
            "Имя (необязательно)",
        ],
    ),
    (
        "partner.sessions.language",
        ["Page language", "Бет тілі", "Язык страницы"],
    ),
    (
        "partner.sessions.start",
        ["Create link", "Сілтеме жасау", "Создать ссылку"],
    ),
    (
        "partner.sessions.external_id_required",
        [
            "Enter an external ID for an enrollment.",
            "Тіркеу үшін сыртқы ID енгізіңіз.",
            "Для регистрации укажите внешний ID.",
        ],
    ),
    (
        "partner.sessions.link",
        [
            "Send the person to this link (valid until {time}):",
            "Адамды осы сілтемеге жіберіңіз (жарамдылық мерзімі аяқталатын уақыт: {time}):",
            "Отправьте человека по этой ссылке (действует до {time}):",
        ],
    ),
    (
        "partner.sessions.list_title",
        ["Recent sessions", "Соңғы сессиялар", "Последние сессии"],
    ),
    ("partner.col.session", ["Session", "Сессия", "Сессия"]),
    ("partner.col.state", ["State", "Күйі", "Состояние"]),
    ("partner.col.fail_reason", ["Reason", "Себебі", "Причина"]),
    (
        "partner.col.expires",
        ["Expires", "Мерзімі бітеді", "Истекает"],
    ),
    ("partner.state.pending", ["Pending", "Күтуде", "Ожидает"]),
    (
        "partner.state.completed",
        ["Completed", "Аяқталды", "Завершена"],
    ),
    ("partner.state.failed", ["Failed", "Сәтсіз", "Не удалась"]),
    (
        "partner.state.expired",
        ["Expired", "Мерзімі өтті", "Истекла"],
    ),
    (
        "partner.fail.no_match",
        [
            "No matching palm",
            "Сәйкес алақан табылмады",
            "Ладонь не опознана",
        ],
    ),
    (
        "partner.fail.already_enrolled",
        ["Already enrolled", "Бұрын тіркелген", "Уже зарегистрирован"],
    ),
    (
        "partner.fail.low_quality",
        [
            "Scan quality too low",
            "Сканерлеу сапасы тым төмен",
            "Слишком низкое качество скана",
        ],
    ),
    (
        "partner.fail.liveness_failed",
        [
            "Liveness check failed",
            "Тірі адам екені расталмады",
            "Проверка живости не пройдена",
        ],
    ),
    (
        "partner.fail.cancelled",
        ["Cancelled", "Тоқтатылды", "Отменена"],
    ),
    (
        "partner.fail.reader_offline",
        ["Scanner offline", "Сканер желіден тыс", "Сканер не в сети"],
    ),
    (
        "partner.sessions.cancel",
        ["Cancel session", "Сессияны тоқтату", "Отменить сессию"],
    ),
    (
        "partner.sessions.cancel_confirm",
        [
            "Cancel session {id}? Its link stops working and the session fails as cancelled.",
            "{id} сессиясын тоқтату керек пе? Оның сілтемесі жұмыс істемей қалады, ал сессия «тоқтатылды» себебімен сәтсіз аяқталады.",
            "Отменить сессию {id}? Ссылка перестанет работать, а сессия завершится с причиной «отменена».",
        ],
    ),
    (
        "partner.sessions.cancelled",
        [
            "Session {id} cancelled.",
            "{id} сессиясы тоқтатылды.",
            "Сессия {id} отменена.",
        ],
    ),
    // Paging of the sessions and users lists.
    (
        "partner.page.count",
        [
            "{from}–{to} of {total}",
            "{total} ішінен {from}–{to}",
            "{from}–{to} из {total}",
        ],
    ),
    (
        "partner.page.previous",
        ["Previous page", "Алдыңғы бет", "Предыдущая страница"],
    ),
    (
        "partner.page.next",
        ["Next page", "Келесі бет", "Следующая страница"],
    ),
    // Users tab.
    (
        "partner.users.title",
        [
            "Enrolled users",
            "Тіркелген пайдаланушылар",
            "Зарегистрированные пользователи",
        ],
    ),
    ("partner.col.username", ["Name", "Аты", "Имя"]),
    (
        "partner.col.enrolled_at",
        ["Enrolled", "Тіркелген уақыты", "Дата регистрации"],
    ),
    (
        "partner.col.metadata",
        ["Metadata", "Метадеректер", "Метаданные"],
    ),
    ("partner.users.erase", ["Erase", "Өшіру", "Удалить"]),
    (
        "partner.users.erase_confirm",
        [
            "Erase {id} for good? Their palm template is destroyed and cannot be recovered, and their door access ends at once. This cannot be undone.",
            "{id} пайдаланушысын біржола өшіру керек пе? Оның алақан үлгісі жойылады және оны қалпына келтіру мүмкін емес, есіктерге кіру құқығы бірден тоқтатылады. Бұл әрекетті кері қайтаруға болмайды.",
            "Удалить {id} навсегда? Шаблон ладони будет уничтожен без возможности восстановления, а доступ к дверям прекратится сразу. Это действие необратимо.",
        ],
    ),
    (
        "partner.users.erased",
        [
            "{id} was erased.",
            "{id} біржола өшірілді.",
            "Пользователь {id} удалён.",
        ],
    ),
];
