#!/bin/sh
# CGI handler: the work it stands for takes APP_DELAY seconds.
sleep "${APP_DELAY:-0}"
printf 'Content-Type: text/plain\r\n\r\nok\n'
