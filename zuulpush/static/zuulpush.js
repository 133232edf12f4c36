/* placeholder: the browser client arrives with issue 8 */
export {};
