"""The web console in a real headless Chromium against a real `roster serve`.

Every wait is bounded and waits for a condition on the page (WebDriverWait),
never for a fixed time. Live updates are checked without reloading: a marker set
on `window` before the change must still be there after it.
"""

from __future__ import annotations

import re
import time

from conftest import ADMIN, DEPLOYER, READER, wait_until
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

# --- page helpers ------------------------------------------------------------------


def js(driver, script: str, *args):
    return driver.execute_script(script, *args)


def row_text(driver, service: str) -> str | None:
    return js(driver, "const r = document.querySelector(`tr[data-service='${arguments[0]}']`); return r && r.innerText;", service)


def listed(driver) -> list[str]:
    return js(driver, "return [...document.querySelectorAll('tr[data-service]')].map(r => r.dataset.service);")


def instance_health(driver, instance: str) -> str | None:
    return js(
        driver,
        "const a = document.querySelector(`article[data-instance='${arguments[0]}'] [data-role=instance-health]`);"
        "return a && a.innerText.trim();",
        instance,
    )


def check_cells(driver, instance: str, check: str) -> list[str] | None:
    return js(
        driver,
        "const r = document.querySelector(`article[data-instance='${arguments[0]}'] tr[data-check='${arguments[1]}']`);"
        "return r && [...r.children].map(c => c.innerText.trim());",
        instance,
        check,
    )


def action_message(driver, instance: str) -> str:
    return js(
        driver,
        "const m = document.querySelector(`article[data-instance='${arguments[0]}'] .action-msg`); return m ? m.innerText : '';",
        instance,
    )


def click_action(driver, instance: str, action: str) -> None:
    button = wait_until(
        driver,
        f"the {action} button of {instance}",
        lambda d: d.find_element(By.CSS_SELECTOR, f"article[data-instance='{instance}'] button[data-action='{action}']"),
    )
    button.click()


def use_token(driver, token: str) -> None:
    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token, Keys.ENTER)
    wait_until(driver, "the token to be taken", lambda d: js(d, "return sessionStorage.getItem('roster.token')") == token)


def mark_page(driver) -> None:
    """Sets a marker that a reload would wipe out."""
    js(driver, "window.__noReload = 'still here';")


def assert_not_reloaded(driver) -> None:
    assert js(driver, "return window.__noReload") == "still here", "the page was reloaded"


# --- tests -------------------------------------------------------------------------


def test_root_redirects_and_the_list_shows_registered_services(roster, browser, shots):
    roster.register("web", "web-1", tags=["v2", "http"])
    roster.register("web", "web-2", tags=["v2"])
    roster.register("db", "db-1", port=5432, checks=[{"id": "disk", "ttl": "60s"}])  # starts critical

    browser.get(roster.base + "/")
    assert browser.current_url.startswith(roster.ui), browser.current_url
    wait_until(browser, "both services listed", lambda d: sorted(listed(d)) == ["db", "web"])
    web = row_text(browser, "web")
    assert "2 passing" in web and "v2" in web and "http" in web, web
    assert js(browser, "return document.querySelector(\"tr[data-service='web'] [data-count=instances]\").innerText") == "2"
    db = row_text(browser, "db")
    assert "1 critical" in db and "passing" not in db, db
    # Health is not told by colour alone: each badge has a word and an icon.
    assert js(browser, "return document.querySelectorAll('tr[data-service] .health svg').length") == 2

    # Live: a new service and a health change appear without a reload.
    mark_page(browser)
    roster.register("cache", "cache-1", port=6379)
    status, _ = roster.api("PUT", "/v1/services/db/instances/db-1/checks/disk/pass")
    assert status == 204
    wait_until(browser, "cache to appear", lambda d: "cache" in listed(d))
    wait_until(browser, "db to turn passing", lambda d: "1 passing" in (row_text(d, "db") or ""))
    assert_not_reloaded(browser)
    shots(browser, "services-list")


def test_filter_box_narrows_the_list(roster, browser):
    roster.register("web", "web-1")
    roster.register("web-admin", "wa-1")
    roster.register("db", "db-1", tags=["primary"])
    browser.get(roster.ui)
    wait_until(browser, "three services", lambda d: len(listed(d)) == 3)
    box = browser.find_element(By.ID, "filter")
    # The box is labelled.
    assert js(browser, "return document.querySelector('label[for=filter]').innerText") == "Filter services"

    box.send_keys("web")
    wait_until(browser, "only the web services", lambda d: sorted(listed(d)) == ["web", "web-admin"])
    assert browser.find_element(By.ID, "filter-count").text == "2 of 3 services"

    box.clear()
    box.send_keys("prim")  # matches a tag
    wait_until(browser, "the service tagged primary", lambda d: listed(d) == ["db"])

    box.clear()
    box.send_keys("nothing-like-it")
    wait_until(browser, "no match", lambda d: listed(d) == [])
    assert "No service matches" in browser.find_element(By.ID, "list-msg").text

    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE)
    wait_until(browser, "every service again", lambda d: len(listed(d)) == 3)


def test_failed_check_turns_critical_without_reload(roster, browser):
    roster.register(
        "web",
        "web-1",
        address="10.0.0.7",
        tags=["v2"],
        meta={"zone": "eu-1"},
        checks=[{"id": "app", "ttl": "60s", "initial_status": "passing"}],
    )
    browser.get(roster.ui + "#/service/web")
    wait_until(browser, "web-1 passing", lambda d: instance_health(d, "web-1") == "passing")
    assert check_cells(browser, "web-1", "app")[1] == "passing"
    mark_page(browser)

    status, _ = roster.api("PUT", "/v1/services/web/instances/web-1/checks/app/fail", {"output": "disk full"})
    assert status == 204
    wait_until(browser, "web-1 critical", lambda d: instance_health(d, "web-1") == "critical")
    cells = check_cells(browser, "web-1", "app")
    assert cells[1] == "critical" and cells[2] == "disk full", cells
    assert_not_reloaded(browser)
    # Screen readers hear about it.
    wait_until(browser, "the change announced", lambda d: "web-1 is now critical" in js(d, "return document.getElementById('live').innerText"))
    # The card's border style changes too (not only its colour).
    assert js(browser, "return getComputedStyle(document.querySelector(\"article[data-instance='web-1']\")).borderLeftStyle") == "dashed"


def test_service_detail_shows_instances_checks_and_heartbeats(roster, browser, shots):
    roster.register(
        "web",
        "web-1",
        address="10.0.0.7",
        port=8080,
        tags=["v2", "eu"],
        meta={"zone": "eu-1", "version": "2.4.1"},
        weights={"passing": 10, "warning": 1},
        ttl="30s",
        checks=[{"id": "app", "name": "application self-test", "ttl": "60s", "initial_status": "passing"}],
    )
    roster.register(
        "web",
        "web-2",
        address="10.0.0.8",
        tags=["v2"],
        meta={"zone": "eu-2"},
        ttl="30s",
        checks=[{"id": "queue", "ttl": "60s", "initial_status": "passing"}],
    )
    roster.register("web", "web-3", address="10.0.0.9", tags=["v1"], checks=[{"id": "app", "ttl": "60s", "initial_status": "passing"}])
    assert roster.api("PUT", "/v1/services/web/instances/web-1/checks/app/pass", {"output": "200 OK: 12 ms"})[0] == 204
    assert roster.api("PUT", "/v1/services/web/instances/web-2/checks/queue/warn", {"output": "queue 80% full"})[0] == 204
    assert roster.api("PUT", "/v1/services/web/instances/web-3/maintenance", {"enabled": True, "reason": "kernel upgrade"})[0] == 200

    browser.get(roster.ui + "#/service/web")
    wait_until(browser, "three instances", lambda d: js(d, "return document.querySelectorAll('article[data-instance]').length") == 3)
    assert browser.find_element(By.TAG_NAME, "h1").text == "web"
    assert instance_health(browser, "web-1") == "passing"
    assert instance_health(browser, "web-2") == "warning"
    assert instance_health(browser, "web-3") == "maintenance"

    card = browser.find_element(By.CSS_SELECTOR, "article[data-instance='web-1']").text
    for expected in ("10.0.0.7:8080", "zone=eu-1", "version=2.4.1", "passing 10, warning 1", "v2", "eu"):
        assert expected in card, f"{expected!r} not in {card}"
    assert check_cells(browser, "web-1", "app")[2] == "200 OK: 12 ms"
    assert check_cells(browser, "web-2", "queue")[1:] == ["warning", "queue 80% full"]
    assert "kernel upgrade" in browser.find_element(By.CSS_SELECTOR, "article[data-instance='web-3']").text

    # Time since the last heartbeat, from the leases endpoint.
    beat = re.compile(r"^\d+ s ago \(ttl 30s\)$")
    wait_until(
        browser,
        "the heartbeat age of web-1",
        lambda d: beat.match(d.find_element(By.CSS_SELECTOR, "[data-lease='web-1']").text),
    )
    assert "no lease" in browser.find_element(By.CSS_SELECTOR, "[data-lease='web-3']").text
    summary = browser.find_element(By.ID, "summary").text
    assert "1 passing" in summary and "1 warning" in summary and "1 maintenance" in summary, summary
    # The whole page in one picture (the one in docs/ comes from here).
    js(browser, "document.activeElement.blur(); window.scrollTo(0, 0);")
    height = min(js(browser, "return document.documentElement.scrollHeight"), 2000)
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False})
    wait_until(browser, "the taller viewport", lambda d: js(d, "return window.innerHeight") == height)
    shots(browser, "service-detail")


def test_maintenance_needs_an_admin_token(acl_roster, browser, shots):
    roster = acl_roster
    roster.register("web", "web-1")

    # No token: the page loads, the data call is refused with a clear message.
    browser.get(roster.ui)
    wait_until(browser, "the token message", lambda d: "needs a token with read rights" in d.find_element(By.ID, "list-msg").text)
    assert browser.find_element(By.CSS_SELECTOR, "label[for=token]").text == "Access token"

    # A read token shows the catalog but may not put an instance in maintenance.
    use_token(browser, READER)
    wait_until(browser, "web listed", lambda d: listed(d) == ["web"])
    browser.get(roster.ui + "#/service/web")
    wait_until(browser, "web-1 passing", lambda d: instance_health(d, "web-1") == "passing")
    click_action(browser, "web-1", "maintenance")
    wait_until(browser, "the refusal", lambda d: "needs a token with admin rights" in action_message(d, "web-1"))
    assert "may not administer the registry" in action_message(browser, "web-1")
    assert instance_health(browser, "web-1") == "passing"
    status, inst = roster.api("GET", "/v1/services/web/instances/web-1")
    assert status == 200 and "maintenance" not in inst, inst
    shots(browser, "maintenance-refused")

    # An admin token may: on and off again, seen live on the page.
    use_token(browser, ADMIN)
    wait_until(browser, "web-1 shown again", lambda d: instance_health(d, "web-1") == "passing")
    mark_page(browser)
    browser.find_element(By.ID, "reason-web-1").send_keys("kernel upgrade")
    click_action(browser, "web-1", "maintenance")
    wait_until(browser, "web-1 in maintenance", lambda d: instance_health(d, "web-1") == "maintenance")
    status, inst = roster.api("GET", "/v1/services/web/instances/web-1")
    assert inst["maintenance"]["reason"] == "kernel upgrade", inst
    assert "kernel upgrade" in browser.find_element(By.CSS_SELECTOR, "article[data-instance='web-1']").text

    wait_until(
        browser,
        "the End maintenance button",
        lambda d: d.find_element(By.CSS_SELECTOR, "article[data-instance='web-1'] button[data-action=maintenance]").text == "End maintenance",
    )
    click_action(browser, "web-1", "maintenance")
    wait_until(browser, "web-1 passing again", lambda d: instance_health(d, "web-1") == "passing")
    assert "maintenance" not in roster.api("GET", "/v1/services/web/instances/web-1")[1]
    assert_not_reloaded(browser)


def test_deregister_needs_a_write_token(acl_roster, browser):
    roster = acl_roster
    roster.register("web", "web-1")
    roster.register("web", "web-2")
    browser.get(roster.ui + "#/service/web")
    use_token(browser, READER)
    wait_until(browser, "two instances", lambda d: instance_health(d, "web-2") == "passing")

    click_action(browser, "web-1", "deregister")
    click_action(browser, "web-1", "confirm-deregister")
    wait_until(browser, "the refusal", lambda d: "needs a token with write rights" in action_message(d, "web-1"))
    assert roster.api("GET", "/v1/services/web/instances/web-1")[0] == 200

    # Cancelling asks nothing of the registry.
    use_token(browser, DEPLOYER)
    wait_until(browser, "web-1 shown again", lambda d: instance_health(d, "web-1") == "passing")
    click_action(browser, "web-1", "deregister")
    click_action(browser, "web-1", "cancel-deregister")
    assert roster.api("GET", "/v1/services/web/instances/web-1")[0] == 200

    click_action(browser, "web-1", "deregister")
    click_action(browser, "web-1", "confirm-deregister")
    wait_until(browser, "web-1 gone", lambda d: instance_health(d, "web-1") is None)
    assert instance_health(browser, "web-2") == "passing"
    assert roster.api("GET", "/v1/services/web/instances/web-1")[0] == 404
    wait_until(browser, "the removal announced", lambda d: "web-1 was deregistered" in js(d, "return document.getElementById('live').innerText"))


def test_status_page_shows_the_registry(roster, browser, shots):
    roster.register("web", "web-1")
    roster.register("db", "db-1", checks=[{"id": "disk", "ttl": "60s"}])
    status, health = roster.api("GET", "/health")
    assert status == 200
    browser.get(roster.ui + "#/status")

    def field(d, name):
        return js(d, "const f = document.querySelector(`[data-field='${arguments[0]}']`); return f && f.innerText.trim();", name)

    wait_until(browser, "the version", lambda d: field(d, "version") == health["version"])
    assert re.fullmatch(r"(\d+ (d|h|min) )*\d+ s", field(browser, "uptime")), field(browser, "uptime")
    assert field(browser, "index") == str(health["index"])
    assert field(browser, "self-preservation") == "inactive"
    assert field(browser, "services") == "2" and field(browser, "instances") == "2"
    by_health = field(browser, "by-health")
    assert "1 passing" in by_health and "1 critical" in by_health, by_health
    assert field(browser, "role") == "single node"
    assert browser.find_element(By.CSS_SELECTOR, "a[data-nav=status]").get_attribute("aria-current") == "page"
    shots(browser, "status")


def test_status_page_shows_which_cluster_member_is_down(cluster, browser, shots):
    """SIGKILL of a follower: the leader reads it unreachable within a few
    heartbeats, and the console's member table (on the other follower, which
    asks the leader) shows it."""
    status, view = cluster[0].api("GET", "/v1/operator/raft")
    assert status == 200, view
    leader_id = view["leader"]
    ids = {}
    for node in cluster:
        _, s = node.api("GET", "/v1/operator/raft")
        ids[s["node"]] = node
    leader = ids[leader_id]
    followers = [n for i, n in ids.items() if i != leader_id]
    shown, victim = followers
    victim_id = next(i for i, n in ids.items() if n is victim)

    browser.get(shown.ui + "#/status")

    def cell(d, node_id, col):
        return js(d, "const c = document.querySelector(`#members tr[data-node='${arguments[0]}'] [data-col=${arguments[1]}]`);"
                     "return c && c.innerText.trim();", str(node_id), col)

    wait_until(browser, "every member reachable", lambda d: all(cell(d, i, "reachable") == "reachable" for i in ids))
    assert cell(browser, victim_id, "lag") == "0 entries"
    assert f"As node {leader_id} (the leader)" in js(browser, "return document.querySelector('#members').innerText;")

    victim.proc.kill()  # SIGKILL
    killed = time.monotonic()
    while True:
        _, s = leader.api("GET", "/v1/operator/raft")
        member = next(m for m in s["members"] if m["id"] == victim_id)
        if member["reachable"] is False:
            took = time.monotonic() - killed
            break
        assert time.monotonic() - killed < 10, s
        time.sleep(0.01)
    print(f"a SIGKILLed follower read unreachable on the leader {took * 1000:.0f} ms after the kill")
    # Three 100 ms heartbeats plus the 200 ms floor, and a second of slack.
    assert took < 0.5 + 1.0, took
    # The page refreshes every 5 s.
    wait_until(browser, "the killed member unreachable", lambda d: cell(d, victim_id, "reachable") == "unreachable")
    assert cell(browser, leader_id, "reachable") == "reachable"
    shots(browser, "status-cluster-member-down")
    victim.proc.wait(timeout=10)
    victim.proc = None


def test_keyboard_reaches_a_service_and_opens_it(roster, browser):
    roster.register("web", "web-1")
    browser.get(roster.ui)
    wait_until(browser, "web listed", lambda d: listed(d) == ["web"])
    body = browser.find_element(By.TAG_NAME, "body")
    body.click()
    target = "a[href='#/service/web']"
    for _ in range(40):
        if js(browser, "return document.activeElement.matches(arguments[0])", target):
            break
        browser.switch_to.active_element.send_keys(Keys.TAB)
    else:
        raise AssertionError("Tab never reached the link to web")
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    wait_until(browser, "the service page", lambda d: d.find_element(By.TAG_NAME, "h1").text == "web")
    # Focus moves to the new page's heading, so a screen reader starts there.
    assert js(browser, "return document.activeElement.tagName") == "H1"


def test_phone_width_has_no_horizontal_scrolling(roster, browser, shots):
    roster.register(
        "payments-gateway-eu-west",
        "payments-gateway-eu-west-instance-0001",
        address="ip-10-0-0-17.eu-west-1.compute.internal",
        tags=["v2", "canary", "team-payments", "pci"],
        meta={"build": "2026-10-19T12:00:00Z-abcdef0123456789", "zone": "eu-west-1a"},
        checks=[{"id": "app", "ttl": "60s", "initial_status": "passing"}],
    )
    assert roster.api(
        "PUT",
        "/v1/services/payments-gateway-eu-west/instances/payments-gateway-eu-west-instance-0001/checks/app/warn",
        {"output": "upstream latency p99=870ms over budget; see https://runbooks.example/payments/latency-budget"},
    )[0] == 204
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 375, "height": 812, "deviceScaleFactor": 1, "mobile": True}
    )
    overflow = "return [document.documentElement.scrollWidth, window.innerWidth]"
    for page, ready in (
        ("", lambda d: len(listed(d)) == 1),
        ("#/service/payments-gateway-eu-west", lambda d: instance_health(d, "payments-gateway-eu-west-instance-0001") == "warning"),
        ("#/status", lambda d: js(d, "return !!document.querySelector('[data-field=version]')")),
    ):
        browser.get(roster.ui + page)
        wait_until(browser, f"page {page or 'list'}", ready)
        width, inner = js(browser, overflow)
        assert inner == 375, inner
        assert width <= inner, f"{page or 'list'}: the page is {width}px wide in a {inner}px viewport"
        if page.startswith("#/service"):
            shots(browser, "service-detail-phone")


def test_dark_mode_follows_the_system(roster, browser, shots):
    roster.register("web", "web-1")
    roster.register("db", "db-1", checks=[{"id": "disk", "ttl": "60s"}])
    browser.get(roster.ui)
    wait_until(browser, "services listed", lambda d: len(listed(d)) == 2)

    def luminance(prop: str, selector: str = "body") -> float:
        rgb = js(browser, f"return getComputedStyle(document.querySelector(arguments[0])).{prop}", selector)
        r, g, b = (int(x) for x in re.findall(r"\d+", rgb)[:3])
        return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255

    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "light"}]})
    wait_until(browser, "a light page", lambda d: luminance("backgroundColor") > 0.8)
    assert luminance("color") < 0.3

    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    wait_until(browser, "a dark page", lambda d: luminance("backgroundColor") < 0.15)
    assert luminance("color") > 0.7, "text stays readable on the dark background"
    # The critical badge keeps a strong contrast with its own background.
    fg = luminance("color", "tr[data-service=db] .health")
    bg = luminance("backgroundColor", "tr[data-service=db] .health")
    assert fg - bg > 0.4, (fg, bg)
    shots(browser, "services-dark")
