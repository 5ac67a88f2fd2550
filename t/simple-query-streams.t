# $ws->query_param and $sse->query_param: the query string of the request
# that opened a WebSocket or an SSE stream (in process, PAGI::Test::Client).
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server ();    # its import sets the alarm bounding this file
use PAGI::Test::Client;
use PAGI::Simple;

my $app = PAGI::Simple->new;
$app->websocket('/ws' => sub ($ws) {
    $ws->send(join '|', $ws->query_param('name') // 'none', @{ $ws->query_params('tag') });
});
$app->sse('/feed' => sub ($sse) {
    $sse->send(info => join('|', $sse->query_param('channel') // 'none', @{ $sse->query_params('channel') }));
});
my $client = PAGI::Test::Client->new(app => $app->to_app);

my $ws = $client->websocket('/ws?name=B%C3%B8b&tag=a&tag=b');
ok($ws->accepted, 'the WebSocket is accepted');
is($ws->receive, "B\x{f8}b|a|b", 'query_param decodes UTF-8; query_params gives every value');
$ws->close;

my $none = $client->websocket('/ws');
is($none->receive, 'none', 'no query string: undef and an empty list');
$none->close;

my $sse = $client->sse('/feed?channel=x&channel=y');
my $ev = $sse->next_event;
is($ev->{event}, 'info', 'an SSE event');
is($ev->{data}, 'y|x|y', 'query_param is the last value, query_params all of them');
$sse->close;

done_testing;
