# A JSON CRUD API on PAGI::Simple: books kept in memory, validation errors as 4xx.
# Run: perl -Mblib bin/pagi-server examples/simple-05-rest/app.pl --port 5000
#   curl -X POST -H 'Content-Type: application/json' -d '{"title":"Dune","year":1965}' http://127.0.0.1:5000/books
#                                    → 201 {"id":1,"title":"Dune","year":1965}
#   curl http://127.0.0.1:5000/books → 200 [{"id":1,"title":"Dune","year":1965}]
#   curl http://127.0.0.1:5000/books/1, -X PUT/PATCH/DELETE .../books/1
#   Bad input → 422 {"errors":{"field":"what is wrong"}}; unknown id → 404; malformed JSON → 400.
use PAGI::Simple;

my $app = PAGI::Simple->new(name => 'Books API');
my %books;
my $next_id = 1;

# Returns a hashref of field => problem (empty when the book is valid).
sub problems ($data, $partial) {
    return { body => 'must be a JSON object' } unless ref $data eq 'HASH';
    my %err;
    my %known = map { $_ => 1 } qw(title year);
    $err{$_} = 'is not a known field' for grep { !$known{$_} } sort keys %$data;
    if (exists $data->{title} || !$partial) {
        $err{title} = 'is required and must be a non-empty string'
            unless defined $data->{title} && !ref $data->{title} && $data->{title} =~ /\S/;
    }
    if (exists $data->{year}) {
        $err{year} = 'must be an integer between 0 and 9999'
            unless defined $data->{year} && $data->{year} =~ /\A\d{1,4}\z/;
    }
    return \%err;
}

sub fail_validation ($c, $err) { $c->json({ errors => $err }, 422) }

sub find_book ($c) {
    my $book = $books{ $c->path_params->{id} } or $c->error(404, 'no book with id ' . $c->path_params->{id});
    return $book;
}

$app->error(404 => sub ($c, $msg) { $c->json({ error => $msg // 'not found' }, 404) });
$app->error(400 => sub ($c, $msg) { $c->json({ error => $msg }, 400) });

$app->group('/books' => sub ($app) {
    $app->get('/' => sub ($c) { $c->json([ map { $books{$_} } sort { $a <=> $b } keys %books ]) });
    $app->post('/' => sub ($c) {
        my $data = $c->json_body;
        my $err = problems($data, 0);
        return fail_validation($c, $err) if %$err;
        my $book = { id => $next_id++, title => $data->{title}, (exists $data->{year} ? (year => 0 + $data->{year}) : ()) };
        $books{ $book->{id} } = $book;
        $c->header(location => $c->url_for(book => { id => $book->{id} }));
        $c->json($book, 201);
    });
    $app->get('/:id<\d+>' => { name => 'book' }, sub ($c) { $c->json(find_book($c)) });
    for my $method (qw(put patch)) {
        $app->$method('/:id<\d+>' => sub ($c) {
            my $book = find_book($c);
            my $data = $c->json_body;
            my $err = problems($data, $method eq 'patch');
            return fail_validation($c, $err) if %$err;
            %$book = (id => $book->{id}) if $method eq 'put';
            $book->{title} = $data->{title} if exists $data->{title};
            $book->{year} = 0 + $data->{year} if exists $data->{year};
            $c->json($book);
        });
    }
    $app->delete('/:id<\d+>' => sub ($c) {
        my $book = find_book($c);
        delete $books{ $book->{id} };
        $c->status(204)->send_response('');
    });
});

$app->to_app;
