//! Messages of the operator dashboard (`/admin`).
//!
//! Keys start with `admin.`; `admin.reason.*` are the SPEC 6 denial reasons, `admin.type.*`
//! the event types of the live feed, `admin.door.*` the door states of `GET /admin/v1/doors`,
//! `admin.reject.*` the reasons of `CaptureRejected` and `admin.fail.*` those of `SessionFailed`.
//! `{name}` placeholders are filled in by the script and must survive translation.

use super::Entry;

pub const ADMIN: &[Entry] = &[
    (
        "admin.title",
        ["Operator dashboard", "Оператор тақтасы", "Панель оператора"],
    ),
    ("admin.sections", ["Sections", "Бөлімдер", "Разделы"]),
    // Tabs.
    (
        "admin.tab.reader",
        [
            "Virtual reader",
            "Виртуалды сканер",
            "Виртуальный считыватель",
        ],
    ),
    ("admin.tab.doors", ["Doors", "Есіктер", "Двери"]),
    ("admin.tab.readers", ["Readers", "Сканерлер", "Считыватели"]),
    ("admin.tab.events", ["Events", "Оқиғалар", "События"]),
    (
        "admin.tab.users",
        ["Users", "Пайдаланушылар", "Пользователи"],
    ),
    (
        "admin.tab.partners",
        ["Partners", "Серіктестер", "Партнёры"],
    ),
    ("admin.tab.site", ["Site", "Объект", "Объект"]),
    ("admin.tab.audit", ["Audit", "Аудит", "Аудит"]),
    // Door states.
    ("admin.door.locked", ["Locked", "Құлыпталған", "Заперта"]),
    ("admin.door.unlocked", ["Unlocked", "Құлпы ашық", "Отперта"]),
    ("admin.door.alarm", ["Alarm", "Дабыл", "Тревога"]),
    (
        "admin.door.device_down",
        ["Device down", "Құрылғы істемейді", "Устройство недоступно"],
    ),
    ("admin.door.unknown", ["Unknown", "Белгісіз", "Неизвестно"]),
    (
        "admin.alarm.forced",
        ["Forced open", "Рұқсатсыз ашылды", "Открыта без разрешения"],
    ),
    (
        "admin.alarm.held",
        [
            "Held open too long",
            "Тым ұзақ ашық тұр",
            "Слишком долго открыта",
        ],
    ),
    // Denial reasons (SPEC 6).
    (
        "admin.reason.no_match",
        [
            "Palm not recognised",
            "Алақан танылмады",
            "Ладонь не распознана",
        ],
    ),
    (
        "admin.reason.user_erased",
        [
            "This person's record was erased",
            "Бұл адамның жазбасы жойылған",
            "Запись этого человека удалена",
        ],
    ),
    (
        "admin.reason.no_access_level",
        [
            "No access level assigned",
            "Қолжетімділік деңгейі берілмеген",
            "Уровень доступа не назначен",
        ],
    ),
    (
        "admin.reason.unknown_access_level",
        [
            "The access level is not defined in the site policy",
            "Қолжетімділік деңгейі объект саясатында анықталмаған",
            "Уровень доступа не описан в политике объекта",
        ],
    ),
    (
        "admin.reason.door_not_in_level",
        [
            "This door is not in the person's access level",
            "Бұл есік адамның қолжетімділік деңгейіне кірмейді",
            "Эта дверь не входит в уровень доступа человека",
        ],
    ),
    (
        "admin.reason.outside_schedule",
        [
            "Outside the allowed hours",
            "Рұқсат етілген уақыттан тыс",
            "Вне разрешённого времени",
        ],
    ),
    (
        "admin.reason.holiday",
        [
            "Closed for a holiday",
            "Мереке күні: кіру жабық",
            "Праздничный день: проход закрыт",
        ],
    ),
    (
        "admin.reason.not_yet_valid",
        [
            "Access is not valid yet",
            "Рұқсат әлі күшіне енген жоқ",
            "Доступ ещё не действует",
        ],
    ),
    (
        "admin.reason.expired",
        [
            "Access has expired",
            "Рұқсаттың мерзімі өтіп кеткен",
            "Срок доступа истёк",
        ],
    ),
    (
        "admin.reason.partner_not_allowed",
        [
            "This person's organisation is not admitted at this site",
            "Бұл адамның ұйымына осы объектіге кіруге рұқсат жоқ",
            "Организации этого человека вход на объект не разрешён",
        ],
    ),
    (
        "admin.reason.anti_passback",
        [
            "Anti-passback: no exit recorded since the last entry",
            "Қайта кіруге тыйым: соңғы кіруден кейін шығу тіркелмеген",
            "Антипассбэк: после последнего входа не отмечен выход",
        ],
    ),
    (
        "admin.reason.lockdown",
        [
            "The site is in lockdown",
            "Объектіде бұғаттау режимі қосулы",
            "На объекте включена блокировка",
        ],
    ),
    // Why a reader's capture was refused (CaptureRejected, core::event::CaptureRejection).
    (
        "admin.reject.unknown_session",
        ["unknown session", "белгісіз сессия", "неизвестная сессия"],
    ),
    (
        "admin.reject.session_not_pending",
        [
            "the session has already ended",
            "сессия аяқталып қойған",
            "сессия уже завершена",
        ],
    ),
    (
        "admin.reject.no_door",
        [
            "the reader is at no door (or there is no site policy)",
            "сканер ешбір есікке бекітілмеген (немесе объект саясаты жоқ)",
            "считыватель не привязан ни к одной двери (или нет политики объекта)",
        ],
    ),
    (
        "admin.reject.low_quality",
        [
            "scan quality too low, asked to scan again",
            "сканерлеу сапасы тым төмен, қайта сканерлеу сұралды",
            "слишком низкое качество скана, запрошен повторный скан",
        ],
    ),
    (
        "admin.reject.wrong_reader",
        [
            "not the reader the session is armed at",
            "сессия осы сканерде күтілмеген",
            "сессия ожидает другой считыватель",
        ],
    ),
    // Why a session failed (SessionFailed, core::ids::FailReason).
    (
        "admin.fail.no_match",
        [
            "no matching palm",
            "сәйкес алақан табылмады",
            "ладонь не опознана",
        ],
    ),
    (
        "admin.fail.already_enrolled",
        ["already enrolled", "бұрын тіркелген", "уже зарегистрирован"],
    ),
    (
        "admin.fail.low_quality",
        [
            "scan quality too low",
            "сканерлеу сапасы тым төмен",
            "слишком низкое качество скана",
        ],
    ),
    (
        "admin.fail.liveness_failed",
        [
            "liveness check failed",
            "тірі адам екені расталмады",
            "проверка живости не пройдена",
        ],
    ),
    (
        "admin.fail.cancelled",
        ["cancelled", "тоқтатылды", "отменена"],
    ),
    (
        "admin.fail.reader_offline",
        [
            "reader offline",
            "сканер желіден тыс",
            "считыватель не в сети",
        ],
    ),
    // Event types of the live feed.
    (
        "admin.type.PartnerCreated",
        ["Partner created", "Серіктес құрылды", "Партнёр создан"],
    ),
    (
        "admin.type.PartnerActivated",
        [
            "Partner activated",
            "Серіктес қосылды",
            "Партнёр активирован",
        ],
    ),
    (
        "admin.type.PartnerDeactivated",
        [
            "Partner deactivated",
            "Серіктес өшірілді",
            "Партнёр деактивирован",
        ],
    ),
    (
        "admin.type.SessionCreated",
        ["Session started", "Сессия басталды", "Сессия начата"],
    ),
    (
        "admin.type.IdempotencyKeyUsed",
        [
            "Idempotency key used",
            "Идемпотенттілік кілті қолданылды",
            "Использован ключ идемпотентности",
        ],
    ),
    (
        "admin.type.SessionCompleted",
        [
            "Session completed",
            "Сессия сәтті аяқталды",
            "Сессия завершена",
        ],
    ),
    (
        "admin.type.SessionFailed",
        [
            "Session failed",
            "Сессия сәтсіз аяқталды",
            "Сессия не удалась",
        ],
    ),
    (
        "admin.type.SessionExpired",
        [
            "Session expired",
            "Сессияның мерзімі өтті",
            "Срок сессии истёк",
        ],
    ),
    (
        "admin.type.UserEnrolled",
        [
            "User enrolled",
            "Пайдаланушы тіркелді",
            "Пользователь зарегистрирован",
        ],
    ),
    (
        "admin.type.UserErased",
        ["User erased", "Пайдаланушы жойылды", "Пользователь удалён"],
    ),
    (
        "admin.type.SessionReaderArmed",
        [
            "Reader armed for a session",
            "Сканер сессияға дайындалды",
            "Считыватель подготовлен для сессии",
        ],
    ),
    (
        "admin.type.CaptureRetryRequested",
        [
            "Scan retry requested",
            "Қайта сканерлеу сұралды",
            "Запрошено повторное сканирование",
        ],
    ),
    (
        "admin.type.CaptureRejected",
        [
            "Scan rejected",
            "Сканерлеу қабылданбады",
            "Сканирование отклонено",
        ],
    ),
    (
        "admin.type.ReaderStatusChanged",
        [
            "Reader status changed",
            "Сканер күйі өзгерді",
            "Статус считывателя изменился",
        ],
    ),
    (
        "admin.type.WebhookConfigured",
        ["Webhook configured", "Вебхук бапталды", "Вебхук настроен"],
    ),
    (
        "admin.type.WebhookSecretRotated",
        [
            "Webhook secret rotated",
            "Вебхук құпиясы ауыстырылды",
            "Секрет вебхука заменён",
        ],
    ),
    (
        "admin.type.WebhookEnabled",
        ["Webhook enabled", "Вебхук қосылды", "Вебхук включён"],
    ),
    (
        "admin.type.WebhookDisabled",
        ["Webhook disabled", "Вебхук өшірілді", "Вебхук отключён"],
    ),
    (
        "admin.type.DeliveryQueued",
        [
            "Webhook delivery queued",
            "Вебхук жіберу кезекке қойылды",
            "Доставка вебхука поставлена в очередь",
        ],
    ),
    (
        "admin.type.DeliveryAttempted",
        [
            "Webhook delivery attempt",
            "Вебхукті жеткізу әрекеті",
            "Попытка доставки вебхука",
        ],
    ),
    (
        "admin.type.DeliveryRescheduled",
        [
            "Webhook delivery rescheduled",
            "Вебхукті жеткізу қайта жоспарланды",
            "Доставка вебхука перенесена",
        ],
    ),
    (
        "admin.type.PolicyActivated",
        [
            "Site policy activated",
            "Объект саясаты іске қосылды",
            "Политика объекта активирована",
        ],
    ),
    (
        "admin.type.SiteModeChanged",
        [
            "Site mode changed",
            "Объект режимі өзгерді",
            "Режим объекта изменён",
        ],
    ),
    (
        "admin.type.DoorDecided",
        ["Door decision", "Есік бойынша шешім", "Решение по двери"],
    ),
    (
        "admin.type.DoorRestingChanged",
        [
            "Door resting state changed",
            "Есіктің әдепкі күйі өзгерді",
            "Исходное состояние двери изменилось",
        ],
    ),
    (
        "admin.type.RelaySwitched",
        ["Relay switched", "Реле ауыстырылды", "Реле переключено"],
    ),
    (
        "admin.type.RelayFailed",
        ["Relay failure", "Реле ақауы", "Сбой реле"],
    ),
    (
        "admin.type.DeviceStatusChanged",
        [
            "Relay board status changed",
            "Реле тақтасының күйі өзгерді",
            "Статус релейной платы изменился",
        ],
    ),
    (
        "admin.type.DoorContactChanged",
        [
            "Door opened or closed",
            "Есік ашылды не жабылды",
            "Дверь открыта или закрыта",
        ],
    ),
    (
        "admin.type.DoorExitRequested",
        [
            "Exit button pressed",
            "Шығу батырмасы басылды",
            "Нажата кнопка выхода",
        ],
    ),
    (
        "admin.type.DoorForcedOpen",
        [
            "Door forced open",
            "Есік рұқсатсыз ашылды",
            "Дверь открыта без разрешения",
        ],
    ),
    (
        "admin.type.DoorHeldOpen",
        [
            "Door held open",
            "Есік тым ұзақ ашық тұр",
            "Дверь слишком долго открыта",
        ],
    ),
    (
        "admin.type.UpstreamIdentifyStarted",
        [
            "Upstream identification started",
            "Сыртқы сәйкестендіру басталды",
            "Начата внешняя идентификация",
        ],
    ),
    (
        "admin.type.UpstreamIdentifyFailed",
        [
            "Upstream unavailable",
            "Сыртқы сервис қолжетімсіз",
            "Внешний сервис недоступен",
        ],
    ),
    (
        "admin.type.UpstreamSessionEnded",
        [
            "Upstream identification ended",
            "Сыртқы сәйкестендіру аяқталды",
            "Внешняя идентификация завершена",
        ],
    ),
    // Why a door's resting state changed, and where an activated policy came from.
    (
        "admin.cause.normal",
        ["normal mode", "қалыпты режим", "обычный режим"],
    ),
    (
        "admin.cause.lockdown",
        ["lockdown", "бұғаттау", "блокировка"],
    ),
    (
        "admin.cause.emergency",
        ["emergency unlock", "апаттық ашу", "аварийная разблокировка"],
    ),
    (
        "admin.cause.policy",
        ["new policy", "жаңа саясат", "новая политика"],
    ),
    (
        "admin.cause.schedule",
        ["unlock schedule", "ашу кестесі", "расписание разблокировки"],
    ),
    (
        "admin.source.startup",
        ["start-up", "іске қосу кезінде", "запуск"],
    ),
    (
        "admin.source.sighup",
        [
            "SIGHUP reload",
            "SIGHUP арқылы қайта жүктеу",
            "перезагрузка по SIGHUP",
        ],
    ),
    (
        "admin.source.admin",
        ["the admin API", "әкімші API", "API администратора"],
    ),
    (
        "admin.source.scenario",
        [
            "a replay scenario",
            "қайталау сценарийі",
            "сценарий воспроизведения",
        ],
    ),
    // Event summaries.
    (
        "admin.unknown_palm",
        ["unknown palm", "белгісіз алақан", "неизвестная ладонь"],
    ),
    (
        "admin.sum.granted",
        [
            "{door}: granted to {who}, level {level}",
            "{door}: {who} үшін рұқсат етілді, деңгей {level}",
            "{door}: доступ разрешён — {who}, уровень {level}",
        ],
    ),
    (
        "admin.sum.denied",
        [
            "{door}: denied to {who} — {reason}",
            "{door}: {who} үшін рұқсат етілмеді — {reason}",
            "{door}: доступ запрещён — {who} — {reason}",
        ],
    ),
    (
        "admin.sum.relay_on",
        [
            "{door}: relay on",
            "{door}: реле қосылды",
            "{door}: реле включено",
        ],
    ),
    (
        "admin.sum.relay_off",
        [
            "{door}: relay off",
            "{door}: реле өшірілді",
            "{door}: реле выключено",
        ],
    ),
    (
        "admin.sum.relay_failed",
        [
            "{door}: relay error — {error}",
            "{door}: реле қатесі — {error}",
            "{door}: ошибка реле — {error}",
        ],
    ),
    (
        "admin.sum.resting_unlocked",
        [
            "{door}: held unlocked ({cause})",
            "{door}: ашық күйде ұсталады ({cause})",
            "{door}: удерживается отпертой ({cause})",
        ],
    ),
    (
        "admin.sum.resting_locked",
        [
            "{door}: locked at rest ({cause})",
            "{door}: әдепкі бойынша құлыпталған ({cause})",
            "{door}: в покое заперта ({cause})",
        ],
    ),
    (
        "admin.sum.contact_open",
        [
            "{door}: door opened",
            "{door}: есік ашылды",
            "{door}: дверь открыта",
        ],
    ),
    (
        "admin.sum.contact_closed",
        [
            "{door}: door closed",
            "{door}: есік жабылды",
            "{door}: дверь закрыта",
        ],
    ),
    (
        "admin.sum.device_up",
        [
            "{device} is reachable",
            "{device} қолжетімді",
            "{device} доступно",
        ],
    ),
    (
        "admin.sum.device_down",
        [
            "{device} is unreachable",
            "{device} қолжетімсіз",
            "{device} недоступно",
        ],
    ),
    (
        "admin.sum.reader_online",
        ["{reader} is online", "{reader} желіде", "{reader} в сети"],
    ),
    (
        "admin.sum.reader_offline",
        [
            "{reader} is offline",
            "{reader} желіден тыс",
            "{reader} не в сети",
        ],
    ),
    (
        "admin.sum.policy",
        [
            "SHA-256 {sha}… from {source}",
            "SHA-256 {sha}…, көзі: {source}",
            "SHA-256 {sha}…, источник: {source}",
        ],
    ),
    (
        "admin.sum.capture_rejected",
        [
            "{reader}: {reason}",
            "{reader} сканері: {reason}",
            "считыватель {reader}: {reason}",
        ],
    ),
    (
        "admin.sum.delivered",
        [
            "delivered ({status}), attempt {attempt}",
            "жеткізілді ({status}), {attempt}-әрекет",
            "доставлено ({status}), попытка {attempt}",
        ],
    ),
    (
        "admin.sum.delivery_failed",
        [
            "not delivered ({status}), attempt {attempt}",
            "жеткізілмеді ({status}), {attempt}-әрекет",
            "не доставлено ({status}), попытка {attempt}",
        ],
    ),
    // Virtual reader (demo mode).
    (
        "admin.scan.title",
        [
            "Virtual reader",
            "Виртуалды сканер",
            "Виртуальный считыватель",
        ],
    ),
    (
        "admin.scan.intro",
        [
            "Present a demo person's palm at a door's reader, as if they stood there.",
            "Демо адамның алақанын есік сканеріне, ол сол жерде тұрғандай, ұсыныңыз.",
            "Приложите ладонь демонстрационного человека к считывателю двери, как будто он стоит там.",
        ],
    ),
    ("admin.scan.person", ["Person", "Адам", "Человек"]),
    ("admin.scan.door", ["Door", "Есік", "Дверь"]),
    (
        "admin.scan.door_option",
        [
            "{door} (reader {reader})",
            "{door} ({reader} сканері)",
            "{door} (считыватель {reader})",
        ],
    ),
    (
        "admin.scan.stranger",
        [
            "Unknown palm (not enrolled)",
            "Белгісіз алақан (тіркелмеген)",
            "Неизвестная ладонь (не зарегистрирована)",
        ],
    ),
    (
        "admin.scan.stranger_info",
        [
            "Nobody enrolled this palm: every door should refuse it.",
            "Бұл алақан тіркелмеген: оны барлық есік қабылдамауы тиіс.",
            "Эту ладонь никто не регистрировал: её должна отклонить любая дверь.",
        ],
    ),
    (
        "admin.scan.person_info",
        [
            "Access level: {level} · ID {id}",
            "Қолжетімділік деңгейі: {level} · ID {id}",
            "Уровень доступа: {level} · ID {id}",
        ],
    ),
    (
        "admin.scan.button",
        ["Scan palm", "Алақанды сканерлеу", "Сканировать ладонь"],
    ),
    (
        "admin.scan.scanning",
        ["Scanning…", "Сканерленуде…", "Сканирование…"],
    ),
    ("admin.scan.result", ["Result", "Нәтиже", "Результат"]),
    (
        "admin.scan.idle",
        [
            "Choose a person and a door, then scan.",
            "Адам мен есікті таңдап, сканерлеңіз.",
            "Выберите человека и дверь, затем сканируйте.",
        ],
    ),
    (
        "admin.scan.granted",
        ["Door opened", "Есік ашылды", "Дверь открыта"],
    ),
    (
        "admin.scan.denied",
        ["Access denied", "Кіруге рұқсат жоқ", "Доступ запрещён"],
    ),
    (
        "admin.scan.level",
        ["level {level}", "{level} деңгейі", "уровень {level}"],
    ),
    (
        "admin.scan.door_now",
        ["{door} is now:", "{door} қазір:", "{door} сейчас:"],
    ),
    (
        "admin.scan.waiting_relay",
        [
            "Waiting for the relay to switch…",
            "Реленің ауысуы күтілуде…",
            "Ожидание переключения реле…",
        ],
    ),
    (
        "admin.scan.watching",
        [
            "Following the door for a few seconds…",
            "Есік бірнеше секунд бақыланады…",
            "Наблюдаем за дверью несколько секунд…",
        ],
    ),
    // Doors.
    (
        "admin.zones.title",
        [
            "Anti-passback zones",
            "Қайта өтуге тыйым салынған аймақтар",
            "Зоны антипассбэка",
        ],
    ),
    (
        "admin.zones.help",
        [
            "Who the gateway holds inside or outside each zone. Forgiving ends that presence: the person's next scan there counts as a first movement (someone who left by a fire door, a reader that was down).",
            "Шлюз әр аймақта кімді ішінде не сыртында деп санайды. Кешіру бұл күйді тоқтатады: адамның сол жердегі келесі сканерлеуі алғашқы қозғалыс болып саналады (өрт есігінен шыққан адам, істен шыққан сканер).",
            "Кого шлюз считает находящимся внутри или снаружи каждой зоны. Сброс завершает это состояние: следующее сканирование человека там считается первым проходом (кто-то вышел через пожарный выход, считыватель не работал).",
        ],
    ),
    ("admin.zones.zone", ["Zone", "Аймақ", "Зона"]),
    (
        "admin.zones.anti_passback",
        ["Anti-passback", "Қайта өтуге тыйым", "Антипассбэк"],
    ),
    (
        "admin.apb.hard",
        ["Hard (denies)", "Қатаң (тыйым салады)", "Строгий (отказ)"],
    ),
    (
        "admin.apb.soft",
        ["Soft (records)", "Жұмсақ (тіркейді)", "Мягкий (запись)"],
    ),
    ("admin.zones.inside", ["Inside", "Ішінде", "Внутри"]),
    ("admin.zones.outside", ["Outside", "Сыртында", "Снаружи"]),
    (
        "admin.zones.forgive_all",
        ["Forgive everyone", "Барлығын кешіру", "Сбросить для всех"],
    ),
    (
        "admin.zones.forgive_all_named",
        [
            "Forgive everyone in {zone}",
            "{zone} аймағындағы барлығын кешіру",
            "Сбросить для всех в зоне {zone}",
        ],
    ),
    (
        "admin.zones.confirm_all",
        [
            "Forgive everyone in {zone} ({n})? Their next scan there counts as a first movement.",
            "{zone} аймағындағы барлығын ({n}) кешіру керек пе? Олардың сол жердегі келесі сканерлеуі алғашқы қозғалыс болып саналады.",
            "Сбросить для всех в зоне {zone} ({n})? Следующее сканирование каждого там будет считаться первым проходом.",
        ],
    ),
    (
        "admin.zones.forgive_one",
        [
            "Forgive one person",
            "Бір адамды кешіру",
            "Сбросить для одного человека",
        ],
    ),
    ("admin.zones.partner", ["Partner", "Серіктес", "Партнёр"]),
    (
        "admin.zones.external_id",
        ["External ID", "Сыртқы ID", "Внешний ID"],
    ),
    (
        "admin.zones.reason",
        [
            "Reason (kept in the log)",
            "Себебі (журналда сақталады)",
            "Причина (сохраняется в журнале)",
        ],
    ),
    ("admin.zones.forgive", ["Forgive", "Кешіру", "Сбросить"]),
    (
        "admin.zones.forgiven",
        [
            "{zone}: {n} forgiven",
            "{zone}: {n} адам кешірілді",
            "{zone}: сброшено — {n}",
        ],
    ),
    (
        "admin.zones.external_id_required",
        [
            "Enter the person's external ID.",
            "Адамның сыртқы ID-ін енгізіңіз.",
            "Введите внешний ID человека.",
        ],
    ),
    (
        "admin.sum.forgiven",
        [
            "{zone}: presence forgiven ({n})",
            "{zone}: күй кешірілді ({n})",
            "{zone}: состояние сброшено ({n})",
        ],
    ),
    (
        "admin.type.ZonePresenceForgiven",
        [
            "Anti-passback forgiven",
            "Қайта өтуге тыйым кешірілді",
            "Антипассбэк сброшен",
        ],
    ),
    ("admin.doors.title", ["Doors", "Есіктер", "Двери"]),
    (
        "admin.doors.none",
        [
            "No doors: no site policy is in force.",
            "Есіктер жоқ: объект саясаты қолданылмаған.",
            "Дверей нет: политика объекта не действует.",
        ],
    ),
    (
        "admin.doors.readers",
        ["readers", "сканерлер", "считыватели"],
    ),
    ("admin.doors.relay", ["Relay", "Реле", "Реле"]),
    ("admin.doors.relay_on", ["on", "қосулы", "включено"]),
    ("admin.doors.relay_off", ["off", "өшірулі", "выключено"]),
    (
        "admin.doors.device",
        ["Relay board", "Реле тақтасы", "Релейная плата"],
    ),
    (
        "admin.doors.device_up",
        ["reachable", "қолжетімді", "доступна"],
    ),
    (
        "admin.doors.device_down",
        ["unreachable", "қолжетімсіз", "недоступна"],
    ),
    (
        "admin.doors.device_unknown",
        ["not checked yet", "әлі тексерілмеген", "ещё не проверена"],
    ),
    ("admin.doors.contact", ["Contact", "Геркон", "Датчик двери"]),
    ("admin.doors.open", ["open", "ашық", "открыта"]),
    ("admin.doors.closed", ["closed", "жабық", "закрыта"]),
    ("admin.doors.resting", ["At rest", "Әдепкі күйі", "В покое"]),
    (
        "admin.doors.resting_unlocked",
        [
            "held unlocked (unlock window or emergency)",
            "ашық ұсталады (ашық кесте не апаттық режим)",
            "удерживается отпертой (окно разблокировки или авария)",
        ],
    ),
    (
        "admin.doors.lease_title",
        ["Lease", "Таймермен ұстау", "Удержание по таймеру"],
    ),
    (
        "admin.doors.lease",
        [
            "on the board's timer: locks by itself within {seconds} s if the gateway goes silent",
            "платаның таймерімен: шлюз үнсіз қалса, {seconds} с ішінде өзі құлыпталады",
            "на таймере платы: запрётся сама в течение {seconds} с, если шлюз замолчит",
        ],
    ),
    ("admin.doors.alarm", ["Alarm", "Дабыл", "Тревога"]),
    (
        "admin.doors.relay_fault",
        ["Relay fault", "Реле ақауы", "Неисправность реле"],
    ),
    (
        "admin.doors.last_decision",
        ["Last decision", "Соңғы шешім", "Последнее решение"],
    ),
    (
        "admin.doors.no_decision",
        ["No decision yet.", "Әзірге шешім жоқ.", "Решений пока нет."],
    ),
    (
        "admin.doors.granted",
        ["Granted", "Рұқсат етілді", "Разрешено"],
    ),
    (
        "admin.doors.denied",
        ["Denied", "Рұқсат етілмеді", "Запрещено"],
    ),
    // Readers.
    (
        "admin.readers.title",
        ["Readers", "Сканерлер", "Считыватели"],
    ),
    ("admin.readers.reader", ["Reader", "Сканер", "Считыватель"]),
    ("admin.readers.online", ["Online", "Желіде", "В сети"]),
    (
        "admin.readers.offline",
        ["Offline", "Желіден тыс", "Не в сети"],
    ),
    (
        "admin.readers.since",
        ["Since", "Қашаннан бері", "С момента"],
    ),
    ("admin.readers.door", ["Door", "Есік", "Дверь"]),
    (
        "admin.readers.model",
        [
            "Model and firmware",
            "Үлгісі және микробағдарламасы",
            "Модель и прошивка",
        ],
    ),
    (
        "admin.readers.unknown",
        ["Unknown", "Белгісіз", "Неизвестно"],
    ),
    (
        "admin.readers.none",
        [
            "No reader has connected yet.",
            "Әзірге ешбір сканер қосылмаған.",
            "Ни один считыватель ещё не подключался.",
        ],
    ),
    // Events.
    (
        "admin.events.title",
        [
            "Live events",
            "Тікелей оқиғалар",
            "События в реальном времени",
        ],
    ),
    (
        "admin.events.intro",
        [
            "Newest first; the last {max} events of the log.",
            "Ең жаңалары басында; журналдың соңғы {max} оқиғасы.",
            "Сначала новые; последние {max} событий журнала.",
        ],
    ),
    ("admin.events.live", ["Live", "Тікелей", "В эфире"]),
    (
        "admin.events.connecting",
        ["Connecting…", "Қосылуда…", "Подключение…"],
    ),
    (
        "admin.events.reconnecting",
        ["Reconnecting…", "Қайта қосылуда…", "Переподключение…"],
    ),
    ("admin.events.pause", ["Pause", "Кідірту", "Пауза"]),
    (
        "admin.events.resume",
        ["Resume", "Жалғастыру", "Продолжить"],
    ),
    (
        "admin.events.resume_new",
        [
            "Resume ({n} new)",
            "Жалғастыру ({n} жаңа)",
            "Продолжить (новых: {n})",
        ],
    ),
    // Users.
    (
        "admin.users.title",
        [
            "Enrolled users",
            "Тіркелген пайдаланушылар",
            "Зарегистрированные пользователи",
        ],
    ),
    ("admin.users.filter", ["Filter", "Сүзгі", "Фильтр"]),
    (
        "admin.users.count",
        [
            "{from}–{to} of {total}",
            "{total} ішінен {from}–{to}",
            "{from}–{to} из {total}",
        ],
    ),
    (
        "admin.users.count_none",
        [
            "none of {total}",
            "{total} ішінен ешқайсысы",
            "ни одного из {total}",
        ],
    ),
    (
        "admin.users.previous",
        ["Previous page", "Алдыңғы бет", "Предыдущая страница"],
    ),
    (
        "admin.users.next",
        ["Next page", "Келесі бет", "Следующая страница"],
    ),
    (
        "admin.users.none_found",
        [
            "No users match “{q}”.",
            "«{q}» бойынша пайдаланушы табылмады.",
            "Нет пользователей по запросу «{q}».",
        ],
    ),
    ("admin.users.partner", ["Partner", "Серіктес", "Партнёр"]),
    (
        "admin.users.external_id",
        ["External ID", "Сыртқы ID", "Внешний ID"],
    ),
    ("admin.users.name", ["Name", "Аты-жөні", "Имя"]),
    (
        "admin.users.level",
        ["Access level", "Қолжетімділік деңгейі", "Уровень доступа"],
    ),
    ("admin.users.no_level", ["none", "жоқ", "нет"]),
    (
        "admin.users.enrolled_at",
        ["Enrolled at", "Тіркелген уақыты", "Дата регистрации"],
    ),
    (
        "admin.users.none",
        [
            "No users enrolled yet.",
            "Әзірге тіркелген пайдаланушы жоқ.",
            "Пока нет зарегистрированных пользователей.",
        ],
    ),
    // Partners.
    (
        "admin.partners.title",
        ["Partners", "Серіктестер", "Партнёры"],
    ),
    (
        "admin.partners.create_title",
        ["New partner", "Жаңа серіктес", "Новый партнёр"],
    ),
    ("admin.partners.name", ["Name", "Атауы", "Название"]),
    (
        "admin.partners.webhook",
        [
            "Webhook URL (optional)",
            "Вебхук URL мекенжайы (міндетті емес)",
            "URL вебхука (необязательно)",
        ],
    ),
    (
        "admin.partners.webhook_hint",
        [
            "Session results are sent there, signed with a secret shown once.",
            "Сессия нәтижелері сол жерге бір рет көрсетілетін құпиямен қол қойылып жіберіледі.",
            "Туда отправляются результаты сессий, подписанные секретом, который показывается один раз.",
        ],
    ),
    (
        "admin.partners.create",
        ["Create partner", "Серіктес құру", "Создать партнёра"],
    ),
    (
        "admin.partners.key_title",
        [
            "API key of {name}",
            "{name} API кілті",
            "API-ключ партнёра {name}",
        ],
    ),
    (
        "admin.partners.key_once",
        [
            "Copy it now: it is shown only this once. palmgate keeps only its hash.",
            "Оны қазір көшіріп алыңыз: ол тек осы жолы көрсетіледі. palmgate оның хэшін ғана сақтайды.",
            "Скопируйте его сейчас: он показывается только один раз. palmgate хранит лишь его хеш.",
        ],
    ),
    (
        "admin.partners.webhook_secret",
        ["Webhook secret", "Вебхук құпиясы", "Секрет вебхука"],
    ),
    ("admin.partners.copy", ["Copy", "Көшіру", "Копировать"]),
    (
        "admin.partners.copied",
        ["Copied", "Көшірілді", "Скопировано"],
    ),
    (
        "admin.partners.copy_failed",
        [
            "Select and copy it by hand",
            "Белгілеп, қолмен көшіріңіз",
            "Выделите и скопируйте вручную",
        ],
    ),
    (
        "admin.partners.copy_hint",
        [
            "Give the key to the partner over a safe channel. Lost keys cannot be shown again.",
            "Кілтті серіктеске қауіпсіз арна арқылы беріңіз. Жоғалған кілтті қайта көрсету мүмкін емес.",
            "Передайте ключ партнёру по защищённому каналу. Потерянный ключ показать повторно нельзя.",
        ],
    ),
    (
        "admin.partners.key_saved",
        ["I have saved it", "Сақтап алдым", "Я сохранил(а) его"],
    ),
    ("admin.partners.active", ["Active", "Белсенді", "Активен"]),
    (
        "admin.partners.inactive",
        ["Deactivated", "Өшірілген", "Деактивирован"],
    ),
    (
        "admin.partners.created_at",
        ["Created", "Құрылған уақыты", "Создан"],
    ),
    (
        "admin.partners.id",
        ["ID", "Идентификатор", "Идентификатор"],
    ),
    (
        "admin.partners.actions",
        ["Actions", "Әрекеттер", "Действия"],
    ),
    (
        "admin.partners.activate",
        ["Activate", "Қосу", "Активировать"],
    ),
    (
        "admin.partners.deactivate",
        ["Deactivate", "Өшіру", "Деактивировать"],
    ),
    (
        "admin.partners.activate_named",
        ["Activate {name}", "{name} қосу", "Активировать {name}"],
    ),
    (
        "admin.partners.deactivate_named",
        ["Deactivate {name}", "{name} өшіру", "Деактивировать {name}"],
    ),
    (
        "admin.partners.confirm_deactivate",
        [
            "Deactivate {name}? Its API calls will be refused until it is activated again.",
            "{name} өшірілсін бе? Қайта қосылғанға дейін оның API сұраулары қабылданбайды.",
            "Деактивировать {name}? Его вызовы API будут отклоняться, пока его снова не активируют.",
        ],
    ),
    (
        "admin.partners.none",
        [
            "No partners yet.",
            "Әзірге серіктестер жоқ.",
            "Партнёров пока нет.",
        ],
    ),
    // The gateway's link to its MQTT broker (`broker_up` false).
    (
        "admin.broker.down",
        [
            "The gateway cannot reach its MQTT broker.",
            "Шлюз MQTT брокеріне қосыла алмай тұр.",
            "Шлюз не может подключиться к MQTT-брокеру.",
        ],
    ),
    (
        "admin.broker.readers",
        [
            "Readers cannot be reached and their status is unknown. Palm scans will not open doors until the connection is back.",
            "Сканерлермен байланыс жоқ, олардың күйі белгісіз. Байланыс қалпына келгенше алақанды сканерлеу есіктерді ашпайды.",
            "Связи со считывателями нет, их состояние неизвестно. Пока связь не восстановится, сканирование ладони не откроет двери.",
        ],
    ),
    (
        "admin.broker.relays",
        [
            "Door relays do not need the broker: lockdown and emergency unlock on the Site tab still work.",
            "Есік релелері брокерге тәуелді емес: «Объект» бөліміндегі бұғаттау мен апаттық ашу жұмыс істей береді.",
            "Реле дверей не зависят от брокера: блокировка и аварийная разблокировка на вкладке «Объект» продолжают работать.",
        ],
    ),
    // Site mode.
    (
        "admin.mode.title",
        ["Site mode", "Объект режимі", "Режим объекта"],
    ),
    (
        "admin.mode.current",
        ["Current mode:", "Ағымдағы режим:", "Текущий режим:"],
    ),
    ("admin.mode.normal", ["Normal", "Қалыпты", "Обычный"]),
    (
        "admin.mode.lockdown",
        ["Lockdown", "Бұғаттау", "Блокировка"],
    ),
    (
        "admin.mode.emergency",
        ["Emergency unlock", "Апаттық ашу", "Аварийная разблокировка"],
    ),
    (
        "admin.mode.both",
        [
            "Lockdown and emergency unlock",
            "Бұғаттау және апаттық ашу",
            "Блокировка и аварийная разблокировка",
        ],
    ),
    ("admin.mode.unknown", ["Unknown", "Белгісіз", "Неизвестен"]),
    (
        "admin.mode.lockdown_hint",
        [
            "Every door refuses every palm and every relay is switched off.",
            "Барлық есік кез келген алақанды қабылдамайды, барлық реле өшіріледі.",
            "Все двери отклоняют любую ладонь, все реле выключены.",
        ],
    ),
    (
        "admin.mode.emergency_hint",
        [
            "Every door is held unlocked (for example in a fire).",
            "Барлық есік ашық күйде ұсталады (мысалы, өрт кезінде).",
            "Все двери удерживаются отпертыми (например, при пожаре).",
        ],
    ),
    (
        "admin.mode.lockdown_on",
        ["Start lockdown", "Бұғаттауды қосу", "Включить блокировку"],
    ),
    (
        "admin.mode.lockdown_off",
        ["End lockdown", "Бұғаттауды өшіру", "Снять блокировку"],
    ),
    (
        "admin.mode.emergency_on",
        [
            "Start emergency unlock",
            "Апаттық ашуды қосу",
            "Включить аварийную разблокировку",
        ],
    ),
    (
        "admin.mode.emergency_off",
        [
            "End emergency unlock",
            "Апаттық ашуды өшіру",
            "Выключить аварийную разблокировку",
        ],
    ),
    (
        "admin.mode.confirm_lockdown_on",
        [
            "Start lockdown? Every door will refuse every palm until you end it.",
            "Бұғаттау қосылсын ба? Оны өшіргенше барлық есік кез келген алақанды қабылдамайды.",
            "Включить блокировку? Пока вы её не снимете, все двери будут отклонять любую ладонь.",
        ],
    ),
    (
        "admin.mode.confirm_lockdown_off",
        [
            "End lockdown? Doors will decide by the site policy again.",
            "Бұғаттау өшірілсін бе? Есіктер қайтадан объект саясаты бойынша шешім қабылдайды.",
            "Снять блокировку? Двери снова будут решать по политике объекта.",
        ],
    ),
    (
        "admin.mode.confirm_emergency_on",
        [
            "Start emergency unlock? Every door will stay unlocked until you end it.",
            "Апаттық ашу қосылсын ба? Оны өшіргенше барлық есік ашық тұрады.",
            "Включить аварийную разблокировку? Пока вы её не выключите, все двери останутся отпертыми.",
        ],
    ),
    (
        "admin.mode.confirm_emergency_off",
        [
            "End emergency unlock? Doors will lock again.",
            "Апаттық ашу өшірілсін бе? Есіктер қайта құлыпталады.",
            "Выключить аварийную разблокировку? Двери снова запрутся.",
        ],
    ),
    // Site policy.
    (
        "admin.policy.title",
        [
            "Site policy in force",
            "Қолданыстағы объект саясаты",
            "Действующая политика объекта",
        ],
    ),
    (
        "admin.policy.none",
        [
            "No site policy is in force: there are no doors.",
            "Объект саясаты қолданылмайды: есіктер жоқ.",
            "Политика объекта не действует: дверей нет.",
        ],
    ),
    (
        "admin.policy.sha256",
        ["SHA-256 hash", "SHA-256 хэші", "Хеш SHA-256"],
    ),
    (
        "admin.policy.timezone",
        ["Time zone", "Уақыт белдеуі", "Часовой пояс"],
    ),
    (
        "admin.policy.activated_at",
        ["Activated at", "Іске қосылған уақыты", "Активирована"],
    ),
    (
        "admin.policy.warnings",
        ["Warnings", "Ескертулер", "Предупреждения"],
    ),
    (
        "admin.policy.document",
        [
            "Document (TOML, read-only)",
            "Құжат (TOML, тек оқуға)",
            "Документ (TOML, только чтение)",
        ],
    ),
    (
        "admin.policy.upload_title",
        [
            "Activate a new policy",
            "Жаңа саясатты іске қосу",
            "Активировать новую политику",
        ],
    ),
    (
        "admin.policy.upload_intro",
        [
            "Edit the document or load a .toml file. It is checked first; if any error is found, the policy in force stays.",
            "Құжатты өзгертіңіз немесе .toml файлын жүктеңіз. Алдымен ол тексеріледі; қате табылса, қолданыстағы саясат өзгермейді.",
            "Измените документ или загрузите файл .toml. Сначала он проверяется; при любой ошибке действующая политика остаётся.",
        ],
    ),
    (
        "admin.policy.file",
        [
            "Load a .toml file",
            ".toml файлын жүктеу",
            "Загрузить файл .toml",
        ],
    ),
    (
        "admin.policy.text",
        [
            "Policy document (TOML)",
            "Саясат құжаты (TOML)",
            "Документ политики (TOML)",
        ],
    ),
    (
        "admin.policy.submit",
        [
            "Validate and activate",
            "Тексеру және іске қосу",
            "Проверить и активировать",
        ],
    ),
    (
        "admin.policy.reset",
        [
            "Back to the policy in force",
            "Қолданыстағы саясатқа оралу",
            "Вернуть действующую политику",
        ],
    ),
    (
        "admin.policy.confirm",
        [
            "Activate this policy? Every door decides by it from now on.",
            "Бұл саясат іске қосылсын ба? Енді барлық есік соған сүйеніп шешім қабылдайды.",
            "Активировать эту политику? Все двери будут решать по ней с этого момента.",
        ],
    ),
    (
        "admin.policy.activated",
        [
            "Policy activated: {sha}",
            "Саясат іске қосылды: {sha}",
            "Политика активирована: {sha}",
        ],
    ),
    (
        "admin.policy.invalid",
        [
            "The policy was refused; the one in force stays. Errors:",
            "Саясат қабылданбады; қолданыстағысы сақталады. Қателер:",
            "Политика отклонена; действующая остаётся. Ошибки:",
        ],
    ),
    (
        "admin.policy.empty",
        ["The document is empty.", "Құжат бос.", "Документ пуст."],
    ),
    (
        "admin.policy.file_loaded",
        [
            "Loaded {name}: check it, then activate.",
            "{name} жүктелді: тексеріп, іске қосыңыз.",
            "Загружен {name}: проверьте и активируйте.",
        ],
    ),
    // Audit export.
    (
        "admin.audit.title",
        ["Audit export", "Аудит экспорты", "Экспорт аудита"],
    ),
    (
        "admin.audit.intro",
        [
            "Every door decision in a time range, with the inputs and the policy it was derived from.",
            "Уақыт аралығындағы барлық есік шешімдері, олардың кіріс деректері мен саясатымен бірге.",
            "Все решения по дверям за период, с исходными данными и политикой, по которой они приняты.",
        ],
    ),
    ("admin.audit.from", ["From", "Басы", "С"]),
    (
        "admin.audit.to",
        [
            "To (empty: now)",
            "Соңы (бос болса: қазір)",
            "По (пусто: сейчас)",
        ],
    ),
    ("admin.audit.format", ["Format", "Пішім", "Формат"]),
    (
        "admin.audit.tz",
        [
            "Times are in this browser's time zone ({tz}); the export asks for them in UTC.",
            "Уақыт осы браузердің белдеуінде ({tz}); экспорт оларды UTC бойынша сұрайды.",
            "Время указано в часовом поясе браузера ({tz}); экспорт запрашивает его в UTC.",
        ],
    ),
    (
        "admin.audit.range",
        ["{from} → {to}", "{from} → {to} аралығы", "с {from} по {to}"],
    ),
    (
        "admin.audit.beginning",
        ["the beginning", "басынан", "начала"],
    ),
    (
        "admin.audit.now",
        ["now", "қазірге дейін", "настоящего момента"],
    ),
    (
        "admin.audit.download",
        ["Download", "Жүктеп алу", "Скачать"],
    ),
];
