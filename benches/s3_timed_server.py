#!/usr/bin/env python3
"""moto's S3 server, as moto_server runs it, logging each request's start
and end (server clock, seconds), method and path to LOG, one a line: how
benches/s3_transfer.py tells the data object's upload from the rest of a
save.   s3_timed_server.py PORT LOG
"""

import sys
import threading
import time

from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import WSGIRequestHandler, run_simple


def main():
    port, log_path = int(sys.argv[1]), sys.argv[2]
    log, lock = open(log_path, "w", buffering=1), threading.Lock()
    app = DomainDispatcherApplication(create_backend_app)
    WSGIRequestHandler.log_request = lambda *args, **kwargs: None

    def timed(environ, start_response):
        start = time.time()
        body = list(app(environ, start_response))
        end = time.time()
        with lock:
            log.write(f"{start:.6f} {end:.6f} {environ['REQUEST_METHOD']} "
                      f"{environ['PATH_INFO']}\n")
        return body

    run_simple("127.0.0.1", port, timed, threaded=True)


if __name__ == "__main__":
    main()
